"""The `Job` table that /work/shared/bench-reference/toy_pipeline.py imports from a `db_claims`
module which that folder does not ship. Reconstructed from the columns toy_pipeline.py writes
(state, payload, progress, created_at, worker, claimed_at, result, updated_at); side_by_side.py
puts this folder on PYTHONPATH for the toy pipeline's processes only."""

from __future__ import annotations

from sqlalchemy import Float, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "toy_jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    state: Mapped[str] = mapped_column(String(20), index=True)
    payload: Mapped[str] = mapped_column(String(200))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(60), nullable=True)
    result: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    claimed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
