"""The orchestrator: pipeline executions made of stages, a durable priority queue, the worker
registry, the handshake dispatch, retries, the cost ledger and the ordered event log."""
