"""The orchestrator: runs pipeline executions, stage by stage, on registered workers.

`executions` (executions, stages and attempts and their transitions; the event log),
`queue` (the durable priority queue: claims, leases, fair turns at claim time),
`dispatch` (the `Dispatcher`: claim, Handshake, Process and WatchProgress, housekeeping),
`batching` (the dispatcher's per-stage writes grouped into shared transactions),
`outcomes` (what becomes of an attempt: retries, the quality gate, usage roll-up),
`events` (live delivery to WatchExecution streams), `registry` (the workers),
`payloads` (large outputs by reference), `kam_client` (templates, auth, outcome reports to KAM).
"""
