"""Structure templates in the database: seeding, rule round trips, matching and checks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from bitware_core.config import OpenAISettings, Settings
from bitware_core.db import Database
from granulator_server import models, template_store
from granulator_server.domain import SEED_TEMPLATES
from granulator_server.errors import InvalidTemplate, TemplateExists
from granulator_server.pricing import PriceTable
from granulator_server.providers import OfflineProvider, OpenAIProvider, choose_provider

MIGRATIONS = str(Path(__file__).parents[2] / "granulator_server" / "migrations")


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'granulator.db'}")
    database.migrate("granulator", MIGRATIONS, models.GranulatorBase.metadata)
    return database


def test_rules_survive_a_round_trip_through_json() -> None:
    for template in SEED_TEMPLATES:
        plain = template_store.rules_to_dict(template.rules)
        assert template_store.rules_from_dict(plain) == template.rules


def test_seeding_inserts_each_seed_once_and_keeps_admin_changes(db: Database) -> None:
    assert db.run_sync(template_store.seed) == 6
    changed = replace(SEED_TEMPLATES[0], description="Edited by an admin.")
    db.run_sync(lambda s: template_store.update(s, changed, ["description"]))

    assert db.run_sync(template_store.seed) == 0
    stored = db.run_sync(lambda s: template_store.find(s, SEED_TEMPLATES[0].name))[0]
    assert stored.description == "Edited by an admin." and stored.version == 2
    assert stored.rules == SEED_TEMPLATES[0].rules


def test_structure_type_match_prefers_the_first_name_in_order(db: Database) -> None:
    db.run_sync(template_store.seed)
    course = next(t for t in SEED_TEMPLATES if t.structure_type == "course")
    db.run_sync(lambda s: template_store.create(s, replace(course, name="course_brief")))

    template, _, match = db.run_sync(lambda s: template_store.find(s, "course"))
    assert (template.name, match) == ("course_brief", "structure_type")
    template, _, match = db.run_sync(lambda s: template_store.find(s, "Course Standard"))
    assert (template.name, match) == ("course_standard", "exact")
    with pytest.raises(TemplateExists):
        db.run_sync(lambda s: template_store.create(s, replace(course, name="course_brief")))


def test_template_check_reports_every_problem_as_a_field_violation() -> None:
    course = SEED_TEMPLATES[0]
    broken = replace(
        course,
        structure_type="poem",
        prompt_template="Write about {subject}",
        json_schema={"type": "object", "properties": {"title": {"type": 5}}},
    )

    with pytest.raises(InvalidTemplate) as raised:
        template_store.check(broken, prefix="template")

    problems = {v.field: v.description for v in raised.value.violations}
    assert set(problems) == {
        "template.structure_type",
        "template.prompt_template",
        "template.json_schema",
    }
    assert "unknown structure type" in problems["template.structure_type"]
    assert "not a valid JSON Schema" in problems["template.json_schema"]


def test_malformed_rules_are_rejected() -> None:
    with pytest.raises(ValueError, match="malformed rules"):
        template_store.rules_from_dict({"counts": [{"name": "modules"}]})
    with pytest.raises(ValueError, match="min <= max"):
        template_store.rules_from_dict(
            {"counts": [{"name": "m", "path": "m", "by_granularity": [[3, 1]] * 5}]}
        )


def test_provider_is_openai_when_a_key_or_base_url_is_configured() -> None:
    prices = PriceTable()
    assert isinstance(choose_provider(Settings(), prices), OfflineProvider)
    chosen = choose_provider(
        Settings(openai=OpenAISettings(base_url="http://127.0.0.1:9/v1")), prices
    )
    assert isinstance(chosen, OpenAIProvider) and chosen.model == "gpt-4o-mini"
    assert isinstance(
        choose_provider(Settings(openai=OpenAISettings(api_key="sk-x")), prices), OpenAIProvider
    )


def test_a_template_change_through_another_engine_is_seen_at_once(tmp_path: Path) -> None:
    # Two engines on one file, as two granulator processes sharing the mesh's database.
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    here, there = Database(url), Database(url)
    here.migrate("granulator", MIGRATIONS, models.GranulatorBase.metadata)
    here.run_sync(template_store.seed)
    name = SEED_TEMPLATES[0].name
    found = here.run_sync(lambda s: template_store.resolve(s, name))
    assert found is not None and found[0].version == 1  # now in `here`'s copy

    changed = replace(SEED_TEMPLATES[0], description="Edited elsewhere.")
    there.run_sync(lambda s: template_store.update(s, changed, ["description"]))
    again = here.run_tx_sync(lambda tx: template_store.resolve_tx(tx, here.engine, name))
    assert again is not None and again[0].version == 2
    assert again[0].description == "Edited elsewhere."
    created = replace(SEED_TEMPLATES[0], name="course_elsewhere")
    there.run_sync(lambda s: template_store.create(s, created))
    assert here.run_sync(lambda s: template_store.resolve(s, "course_elsewhere")) is not None
    here.close()
    there.close()


def test_templates_read_in_a_transaction_that_rolls_back_are_not_kept(db: Database) -> None:
    db.run_sync(template_store.seed)

    def create_then_fail(session: Session) -> None:
        template_store.create(session, replace(SEED_TEMPLATES[0], name="course_phantom"))
        assert template_store.resolve(session, "course_phantom") is not None
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        db.run_sync(create_then_fail)
    assert db.run_sync(lambda s: template_store.resolve(s, "course_phantom")) is None
