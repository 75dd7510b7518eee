"""Settings are parsed strictly: a bad `BITWARE_*` value stops a process with one line that names
the variable, the value and what it accepts (exit 2, no traceback)."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

import pytest

from bitware_core.config import Settings, SettingsError
from granulator_server.pricing import PriceTable
from granulator_server.providers import formats
from granulator_server.providers.endpoints import EndpointConfig, parse_providers
from tests.cli.conftest import bitware, clean_env


@pytest.mark.parametrize(
    ("variable", "value", "accepts"),
    [
        ("BITWARE_PORT", "abc", "a whole number"),
        ("BITWARE_LOG_JSON", "ture", "true, false, 1, 0, yes or no"),
        ("BITWARE_STDIN_SETTINGS", "on", "true, false, 1, 0, yes or no"),
        ("BITWARE_LEASE_SECONDS", "15s", "a number"),
        ("BITWARE_RPC_TIMEOUT", "nan", "a number"),
        ("BITWARE_LOG_LEVEL", "verbose", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("BITWARE_OPENAI_STRUCTURED", "grammar", "auto, json_schema, json_object_schema"),
    ],
)
def test_a_bad_value_names_the_variable_the_value_and_what_is_accepted(
    variable: str, value: str, accepts: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({variable: value})
    assert str(raised.value).startswith(f"{variable}={value!r} is not accepted: use {accepts}")


@pytest.mark.parametrize(
    ("value", "meaning"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("0", False),
        ("No", False),
    ],
)
def test_booleans_take_only_the_six_words(value: str, meaning: bool) -> None:
    assert Settings.from_env({"BITWARE_LOG_JSON": value}).observability.log_json is meaning


def every_field() -> list[tuple[str, Field[Any]]]:
    """(group, field) of every field of every group of Settings."""
    defaults = Settings()
    return [(g.name, f) for g in fields(Settings) for f in fields(getattr(defaults, g.name))]


def test_every_field_is_read_by_a_parser_that_can_refuse() -> None:
    for _, f in every_field():
        if str(f.type) in ("str", "Path") and not f.metadata["choices"]:
            continue  # free text: addresses, URLs, JSON checked where it is used
        variable = f.metadata["env"]
        with pytest.raises(SettingsError, match=f"{variable}="):
            Settings.from_env({variable: "not-a-valid-value"})


def test_every_field_is_read_from_its_own_bitware_variable() -> None:
    variables = Settings.variables()
    assert len(variables) == len(every_field()) == len(set(variables.values()))
    valid = {
        "bool": ("yes", True),
        "int": ("7", 7),
        "float": ("2.5", 2.5),
        "Path": ("/x", Path("/x")),
    }
    for group, f in every_field():
        variable = f.metadata["env"]
        assert variable.startswith("BITWARE_") and variables[variable] == f"{group}.{f.name}"
        choice = f.metadata["choices"][-1] if f.metadata["choices"] else "text"
        raw, value = valid.get(str(f.type), (choice, choice))
        environ = {"BITWARE_WORKER_TOKEN": "given", variable: raw}  # no token file is read
        read = getattr(getattr(Settings.from_env(environ), group), f.name)
        assert read == value != f.default, variable


def test_the_readme_table_lists_every_variable_with_its_field() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    listed = {}
    for names, paths in re.findall(r"^\| (`BITWARE_[^|]*) \| ([^|]*) \|", section, re.MULTILINE):
        pairs = zip(re.findall(r"`(\w+)`", names), re.findall(r"`([\w.]+)`", paths), strict=True)
        listed.update(pairs)
    assert listed == Settings.variables()


def test_the_openai_standard_variables_stand_in_for_unset_bitware_ones() -> None:
    standard = {"OPENAI_API_KEY": "sk-standard", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    fallback = Settings.from_env(standard).openai
    assert (fallback.api_key, fallback.base_url) == ("sk-standard", "http://127.0.0.1:9/v1")
    own = Settings.from_env({**standard, "BITWARE_OPENAI_API_KEY": "sk-own"}).openai
    assert own.api_key == "sk-own"


def test_secrets_are_not_in_the_repr() -> None:
    secret = "sk-never-printed"
    environ = {
        "BITWARE_WORKER_TOKEN": secret,
        "BITWARE_OPENAI_API_KEY": secret,
        "BITWARE_BOOTSTRAP_ADMIN_PASSWORD": secret,
    }
    assert secret not in repr(Settings.from_env(environ))


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BITWARE_OPENAI_EXTRA_BODY", "{", "BITWARE_OPENAI_EXTRA_BODY is not JSON: "),
        ("BITWARE_OPENAI_EXTRA_BODY", "[1]", "BITWARE_OPENAI_EXTRA_BODY must be a JSON object"),
        ("BITWARE_PROVIDERS", "{", "BITWARE_PROVIDERS is not JSON: "),
        ("BITWARE_PROVIDERS", "[]", "BITWARE_PROVIDERS must be a non-empty JSON list"),
        ("BITWARE_PRICE_TABLE", "{", "BITWARE_PRICE_TABLE is not JSON: "),
        ("BITWARE_PRICE_TABLE", "[]", "BITWARE_PRICE_TABLE must be a JSON object of model"),
    ],
)
def test_json_settings_are_read_by_one_parser_that_names_the_variable(
    variable: str, value: str, message: str
) -> None:
    """The three JSON-valued settings are text in Settings, read where they are used."""
    settings = Settings.from_env({variable: value})
    with pytest.raises(ValueError) as raised:
        if variable == "BITWARE_OPENAI_EXTRA_BODY":
            settings.openai.extra_body_json()
        elif variable == "BITWARE_PROVIDERS":
            parse_providers(settings.providers.endpoints, {}, EndpointConfig("d", "u", "m"))
        else:
            PriceTable.with_overrides(settings.providers.price_table)
    assert str(raised.value).startswith(message)


def test_the_structured_modes_the_granulator_knows_are_the_accepted_ones() -> None:
    for mode in formats.CHOICES:
        assert Settings.from_env({"BITWARE_OPENAI_STRUCTURED": mode}).openai.structured == mode


@pytest.mark.parametrize("server", ["kam_server", "orchestrator_server", "granulator_server"])
def test_each_server_process_stops_with_one_line_and_exit_2(server: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", server],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(BITWARE_LOG_JSON="ture", BITWARE_DATA_DIR=str(tmp_path)),
        check=False,
    )
    assert result.returncode == 2, result.stderr
    service = server.removesuffix("_server")
    expected = (
        f"{service}: BITWARE_LOG_JSON='ture' is not accepted: use true, false, 1, 0, yes or no"
    )
    assert result.stderr.strip() == expected
    assert not (tmp_path / f"{service}.db").exists()  # stopped before any work


@pytest.mark.parametrize("server", ["kam_server", "orchestrator_server", "granulator_server"])
def test_a_tls_file_a_server_cannot_read_is_one_line_and_exit_2(
    server: str, tmp_path: Path
) -> None:
    cert = tmp_path / "server.pem"
    cert.write_text("not read: the key is missing first\n")
    result = subprocess.run(
        [sys.executable, "-m", server],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(
            BITWARE_DATA_DIR=str(tmp_path),
            BITWARE_TLS_CERT=str(cert),
            BITWARE_TLS_KEY=str(tmp_path / "missing.key"),
        ),
        check=False,
    )
    assert result.returncode == 2, result.stderr
    service = server.removesuffix("_server")
    expected = (
        f"{service}: BITWARE_TLS_KEY={tmp_path / 'missing.key'}: cannot read it: "
        "No such file or directory"
    )
    assert result.stderr.strip().splitlines()[-1] == expected, result.stderr
    assert "Traceback" not in result.stderr


def test_the_gateway_and_the_cli_stop_the_same_way() -> None:
    gateway = subprocess.run(
        [sys.executable, "-m", "gateway"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(BITWARE_PORT="http"),
        check=False,
    )
    assert gateway.returncode == 2, gateway.stderr
    assert (
        gateway.stderr.strip() == "gateway: BITWARE_PORT='http' is not accepted: use a whole number"
    )
    cli = bitware("migrate", BITWARE_RPC_TIMEOUT="ten")
    assert cli.returncode == 2, cli.stderr
    assert cli.stderr.strip() == "bitware: BITWARE_RPC_TIMEOUT='ten' is not accepted: use a number"
