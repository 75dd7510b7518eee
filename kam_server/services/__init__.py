"""KAM's gRPC handlers, one module per service group: thin translations between protobuf and
the logic modules, which run in one database transaction each: `Database.run_tx` (hand-written
SQL) for what every request passes through (templates read by the orchestrator, creating,
executing, retrying and settling requests), `Database.run` (a SQLAlchemy session) for the rest."""

from __future__ import annotations

from bitware_core.db import Database


class Handlers:
    """What every handler class holds: the database its logic runs against."""

    def __init__(self, db: Database) -> None:
        self.db = db
