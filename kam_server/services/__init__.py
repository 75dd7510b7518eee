"""KAM's gRPC handlers, one module per service group: thin translations between protobuf and
the logic modules, which run in one database transaction each (`Database.run`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session

from bitware_core.db import Database

T = TypeVar("T")


class Handlers:
    """What every handler class holds: the database its logic runs against."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def run(self, work: Callable[[Session], T]) -> T:
        return await self.db.run(work)
