"""Alembic environment of the orchestrator database (see bitware_core.db.run_migrations)."""

from bitware_core.db import run_migrations
from orchestrator_server.models import OrchestratorBase

run_migrations(OrchestratorBase.metadata)
