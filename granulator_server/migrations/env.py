"""Alembic environment of the granulator database (see bitware_core.db.run_migrations)."""

from bitware_core.db import run_migrations
from granulator_server.models import GranulatorBase

run_migrations(GranulatorBase.metadata)
