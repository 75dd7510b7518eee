"""The gateway's routes, one module per area; each handler is one upstream call."""
