"""The REST gateway of Bitware Mesh: HTTP/JSON and Server-Sent Events in front of the gRPC servers.

The gateway only translates. Every rule lives in the gRPC services; a handler here turns an HTTP
request into one gRPC call with the caller's own credentials and turns the answer (or the
`google.rpc.Status`) back into JSON. Start it with `python -m gateway`.

Rooms: `app` (build and run), `upstream` (the long-lived channels), `calls` (credentials →
metadata, protobuf → JSON), `errors` (the one status table), `models` (request bodies),
`schemas` (OpenAPI for protobuf answers), `middleware` and `metrics`, and `routes/`.
"""

from gateway.app import create_app, main

__all__ = ["create_app", "main"]
