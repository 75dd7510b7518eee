"""Each service's schema comes from two places that must agree: its Alembic migrations (for
databases that exist) and its models (a new database is created from them and stamped at the
head, without running Alembic). Checked on real SQLite files for all three services."""

from __future__ import annotations

import json
from pathlib import Path

import alembic.command
import alembic.config
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, text

from bitware_core.db import Database, _script_head
from granulator_server import models as granulator_models
from kam_server import models as kam_models
from orchestrator_server import models as orchestrator_models

ROOT = Path(__file__).parents[2]
SERVICES = {
    "kam": kam_models.KamBase.metadata,
    "orchestrator": orchestrator_models.OrchestratorBase.metadata,
    "granulator": granulator_models.GranulatorBase.metadata,
}


def scripts(service: str) -> str:
    return str(ROOT / f"{service}_server" / "migrations")


def upgrade(db: Database, service: str, revision: str) -> None:
    config = alembic.config.Config()
    config.set_main_option("script_location", scripts(service))
    config.set_main_option("version_table", f"alembic_version_{service}")
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        alembic.command.upgrade(config, revision)


def differences(db: Database, metadata: MetaData) -> list[object]:
    """What Alembic's autogenerate would change to make the database match the models (its
    own version table aside)."""

    def ours(name: str | None, kind: str, _parent: object) -> bool:
        return not (kind == "table" and (name or "").startswith("alembic_version"))

    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_name": ours})
        return list(compare_metadata(context, metadata))


def stored_revision(db: Database, service: str) -> list[str]:
    with db.engine.connect() as connection:
        rows = connection.execute(text(f"SELECT version_num FROM alembic_version_{service}"))
        return list(rows.scalars())


@pytest.mark.parametrize("service", SERVICES)
def test_the_migrations_build_the_schema_the_models_describe(service: str, tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'migrated.db'}")
    upgrade(db, service, "head")
    assert differences(db, SERVICES[service]) == []


@pytest.mark.parametrize("service", SERVICES)
def test_a_new_database_is_created_from_the_models_without_alembic(
    service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Alembic ran for a new database")

    monkeypatch.setattr(alembic.command, "upgrade", refuse)
    db = Database(f"sqlite:///{tmp_path / 'new.db'}")
    db.migrate(service, scripts(service), SERVICES[service])
    assert differences(db, SERVICES[service]) == []
    assert stored_revision(db, service) == [_script_head(scripts(service))]
    db.migrate(service, scripts(service), SERVICES[service])  # at the head: nothing to do


def test_a_database_behind_the_head_is_upgraded_by_alembic(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(db, "kam", "b56629d14d7a")  # KAM's first revision
    assert stored_revision(db, "kam") == ["b56629d14d7a"]
    db.migrate("kam", scripts("kam"), SERVICES["kam"])
    assert stored_revision(db, "kam") == [_script_head(scripts("kam"))]
    assert differences(db, SERVICES["kam"]) == []


def test_api_keys_made_before_scopes_keep_every_scope_and_never_expire(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    upgrade(db, "kam", "52794615f3f2")  # the revision before API key scopes and expiry
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO clients (id, company_name, contact_email, tier, monthly_budget_usd,"
                " status, industry, company_size, created_at) VALUES ('cli_1', 'Acme',"
                " 'a@acme.test', 'basic', 1.0, 'active', '', '', '2026-01-01')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO api_keys (id, client_id, name, prefix, key_hash, created_at, revoked)"
                " VALUES ('key_1', 'cli_1', 'old', 'bwk_x', 'hash', '2026-01-01', 0)"
            )
        )
    db.migrate("kam", scripts("kam"), SERVICES["kam"])
    with db.engine.connect() as connection:
        scopes, expires = connection.execute(
            text("SELECT scopes, expires_at FROM api_keys WHERE id = 'key_1'")
        ).one()
    assert (json.loads(scopes), expires) == (["read", "write"], None)
