"""The granulator: a worker that generates hierarchical structures with an LLM (or the offline
provider), validates them, scores their quality and stores them as element trees."""
