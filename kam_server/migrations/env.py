"""Alembic environment of the kam database (see bitware_core.db.run_migrations)."""

from bitware_core.db import run_migrations
from kam_server.models import KamBase

run_migrations(KamBase.metadata)
