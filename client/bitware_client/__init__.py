"""A typed client of Bitware Mesh's gRPC API: `Client` (blocking) and `AsyncClient` (asyncio).

Example::

    from bitware_client import Client

    with Client("127.0.0.1:50051", orchestrator="127.0.0.1:50052",
                granulator="127.0.0.1:50053", api_key="bw_…") as client:
        result = client.run("AI Development", type="course",
                            on_event=lambda e: print(f"{e.progress:4.0%} {e.message}"))
        for element in result.structure.elements:
            print(element.kind, element.title)
"""

from bitware_client.aio import STRUCTURE_TYPES, URGENCIES, AsyncClient
from bitware_client.errors import (
    AlreadyExists,
    BitwareError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from bitware_client.events import ProgressEvent, RunResult
from bitware_client.options import TLS, Retry
from bitware_client.sync import Client

__version__ = "0.1.0"

__all__ = [
    "STRUCTURE_TYPES",
    "TLS",
    "URGENCIES",
    "AlreadyExists",
    "AsyncClient",
    "BitwareError",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ProgressEvent",
    "ResourceExhausted",
    "Retry",
    "RunResult",
    "Unauthenticated",
    "Unavailable",
]
