"""One typed configuration object, read once at start-up from `BITWARE_*` environment variables.

Every server and the CLI use the same `Settings`; each reads only the fields it needs. Nothing
here has a built-in secret: credentials come from the environment (set by `bitware up`, which
generates them) or are absent.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A `BITWARE_*` variable whose value cannot be read; the message names it."""


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _bool(value: str) -> bool:
    word = value.strip().lower()
    if word not in (*_TRUE, *_FALSE):
        raise ValueError
    return word in _TRUE


def _float(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):  # "nan" and "inf" parse, but no setting means them
        raise ValueError
    return number


# Field annotations are strings (postponed evaluation); each names its parser and what it takes.
_PARSERS: dict[str, Any] = {"bool": _bool, "int": int, "float": _float, "str": str, "Path": Path}
_ACCEPTS = {
    "bool": "true, false, 1, 0, yes or no",
    "int": "a whole number",
    "float": "a number",
}


def _choices(*values: str) -> Any:
    """Metadata of a `str` field that accepts only `values`."""
    return {"choices": values}


#: Fields that fall back to the variable the `openai` tools themselves read.
_STANDARD_NAMES = {"openai_api_key": "OPENAI_API_KEY", "openai_base_url": "OPENAI_BASE_URL"}


def _parse(f: Field[Any], raw: str) -> Any:
    """The value of variable `BITWARE_<f>`, or SettingsError saying what it accepts."""
    choices: tuple[str, ...] = f.metadata.get("choices", ())
    accepts = ", ".join(choices) if choices else _ACCEPTS.get(str(f.type), "")
    try:
        value = _PARSERS[str(f.type)](raw)
    except ValueError:
        value = None
    if value is None or (choices and value not in choices):
        raise SettingsError(f"BITWARE_{f.name.upper()}={raw!r} is not accepted: use {accepts}")
    return value


@dataclass(frozen=True)
class Settings:
    """Configuration of one process. Field `x_y` is read from `BITWARE_X_Y`."""

    #: Folder for the embedded SQLite files and large stage outputs.
    data_dir: Path = Path("data")
    #: SQLAlchemy URL of this service's database; empty means `sqlite:///<data_dir>/<service>.db`.
    database_url: str = ""
    #: Interface the server binds to. Loopback unless told otherwise.
    host: str = "127.0.0.1"
    #: Port the server binds to; 0 picks a free one (the bound port is printed).
    port: int = 0
    #: Address of KAM, host:port (every service asks KAM who a caller is).
    kam_address: str = ""
    #: Address of the orchestrator, host:port.
    orchestrator_address: str = ""
    #: Gateway: the granulators' addresses, host:port, comma-separated; it reads jobs and
    #: structures from whichever answers (every granulator of a mesh shares one job store).
    granulator_address: str = ""
    #: The address other services should use to reach this server; empty means host:bound port.
    advertise_address: str = ""
    #: This process's own worker or service id (`x-worker-id`).
    worker_id: str = ""
    #: This process's own token (`authorization: Bearer`). Never logged.
    worker_token: str = field(default="", repr=False)
    #: A file holding this process's token (a mounted Kubernetes or Docker secret), read at
    #: start-up when worker_token is empty.
    worker_token_file: str = ""
    #: KAM only: credentials to install on start, `id:kind:sha256hex` comma-separated (hashes
    #: only; kind is `worker` or `service`).
    bootstrap_credentials: str = ""
    #: KAM only: email of the first admin, created when no admin exists.
    bootstrap_admin_email: str = ""
    #: KAM only: password of the first admin (hashed at once; never stored in plain text).
    bootstrap_admin_password: str = field(default="", repr=False)
    #: KAM only: capabilities of workers other than the built-in granulator's (`granulate`,
    #: `validate`), comma-separated; master templates may name only known capabilities.
    extra_capabilities: str = ""
    #: KAM only: file holding the key that webhook signing secrets are derived from (each
    #: endpoint's secret is HMAC-SHA256 of its id under this key, so no secret is stored).
    #: Empty means `<data_dir>/webhook.key`, generated on first start; KAM replicas sharing one
    #: database must share this file.
    webhook_key_file: str = ""
    #: KAM only: also accept `http://` webhook URLs on loopback hosts (tests, local development).
    #: Otherwise only `https://` to hosts that are not loopback, private or link-local addresses.
    webhook_allow_insecure: bool = False
    #: KAM only: seconds before the first retry of a failed webhook delivery; each next wait
    #: doubles, up to an hour; a delivery is given up 24 hours after its event.
    webhook_retry_base: float = 10.0
    #: PEM certificate of this server (and of its client side for mutual TLS). Empty = plaintext.
    tls_cert: str = ""
    #: PEM private key for tls_cert.
    tls_key: str = ""
    #: PEM CA bundle: servers require client certificates signed by it; channels verify with it.
    tls_ca: str = ""
    #: How long a verified credential is trusted without asking KAM again, in seconds (≤ 30).
    auth_cache_seconds: float = 10.0
    #: host:port on which to serve Prometheus metrics at /metrics; empty means none.
    metrics_address: str = ""
    #: Log as one JSON object per line instead of key=value text.
    log_json: bool = False
    #: Logging level name: DEBUG, INFO, WARNING, ERROR or CRITICAL.
    log_level: str = field(
        default="INFO", metadata=_choices("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    )
    #: OpenAI-compatible endpoint; empty with an empty key means the offline provider.
    openai_base_url: str = ""
    #: API key for the endpoint. Never logged.
    openai_api_key: str = field(default="", repr=False)
    #: Model name.
    openai_model: str = "gpt-4o-mini"
    #: Seconds one model call may take.
    openai_timeout: float = 60.0
    #: Retries of one model call on 429, 5xx and timeouts.
    openai_max_retries: int = 2
    #: How replies are held to the structure's JSON schema: `json_schema` (strict structured
    #: outputs), `json_object_schema` (llama.cpp's grammar), `json_object` (JSON mode, schema in
    #: the prompt), `prompt` (schema in the prompt only), or `auto`: the strongest the endpoint
    #: takes, stepping down when it rejects one. Replies are validated in every mode.
    openai_structured: str = field(
        default="auto",
        metadata=_choices("auto", "json_schema", "json_object_schema", "json_object", "prompt"),
    )
    #: Token budget of one reply (`max_tokens`, always sent; doubled once for a cut-off reply).
    openai_max_output_tokens: int = 4096
    #: `frequency_penalty` sent with every call when not 0 (small local models repeat
    #: themselves); dropped for an endpoint that rejects it.
    openai_frequency_penalty: float = 0.0
    #: JSON object merged into every request body, e.g. `{"repeat_penalty": 1.1}` for llama.cpp;
    #: dropped for an endpoint that rejects a parameter it names.
    openai_extra_body: str = ""
    #: Granulator: several OpenAI-compatible endpoints in order of preference, as a JSON list
    #: (replaces the `openai_*` endpoint; see granulator_server/providers/endpoints.py):
    #: `[{"name": "a", "base_url": "…/v1", "model": "m", "api_key_env": "A_KEY",
    #: "input_price": 0.15, "output_price": 0.6}, …]`. Keys only by variable name.
    providers: str = ""
    #: Granulator: transient failures in a row (429, 5xx, timeouts) before an endpoint of
    #: `providers` cools down and calls move to the next.
    provider_failures: int = 3
    #: Granulator: seconds an endpoint cools down before it is used again.
    provider_cooldown: float = 60.0
    #: Granulator: prices per 1M tokens merged over the built-in table, as JSON
    #: `{"model": {"input": 0.15, "output": 0.6}}` (dated model names match by prefix).
    price_table: str = ""
    #: Granulator: stage attempts held at once, the capacity it registers with; further offers
    #: are declined as AT_CAPACITY. 0: `max_model_calls` with a model provider (an attempt
    #: mostly waits on the model), 4 with the offline provider (its work is all CPU).
    max_concurrent_jobs: int = 0
    #: Granulator: model calls in flight at once, over all endpoints (more wait their turn); set
    #: it to what the provider's account allows. Rate-limit headers pace calls as well.
    max_model_calls: int = 256
    #: Granulator: attempts in their CPU-bound part at once (checking, scoring and storing a
    #: structure); 0: the machine's cores.
    cpu_jobs: int = 0
    #: Orchestrator: seconds between worker heartbeats.
    heartbeat_interval: float = 2.0
    #: Orchestrator: seconds without a heartbeat before a worker is unhealthy.
    heartbeat_timeout: float = 6.0
    #: Orchestrator: seconds a stage claim lives without renewal; a dead holder's stages are
    #: offered again after this.
    lease_seconds: float = 15.0
    #: Orchestrator: seconds a stage may wait in the queue before its execution fails (time spent
    #: waiting for its client's turn, over the tier's concurrency limit, does not count).
    queue_wait_timeout: float = 3600.0
    #: Deadline of one internal call between services, in seconds.
    rpc_timeout: float = 10.0
    #: Seconds a server waits for in-flight calls on shutdown.
    shutdown_grace: float = 5.0
    #: Read more `BITWARE_NAME=value` lines from stdin, up to an empty line, before starting
    #: (they win over the environment); KAM then also takes `BITWARE_ORCHESTRATOR_ADDRESS=…`
    #: lines while it runs. `bitware up` sets it: it learns each server's port from its ready
    #: line and hands it to the servers that start after it.
    stdin_settings: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Reads `BITWARE_*` variables; keyword overrides win (for tests and the CLI). The
        standard `OPENAI_API_KEY` and `OPENAI_BASE_URL` stand in for unset `BITWARE_` ones."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"BITWARE_{f.name.upper()}")
            if raw is None and f.name in _STANDARD_NAMES:
                raw = env.get(_STANDARD_NAMES[f.name])
            if raw is None:
                continue
            values[f.name] = _parse(f, raw)
        values.update(overrides)
        if values.get("worker_token_file") and not values.get("worker_token"):
            path = Path(values["worker_token_file"])
            try:
                values["worker_token"] = path.read_text(encoding="utf-8").strip()
            except OSError as error:
                raise SettingsError(
                    f"BITWARE_WORKER_TOKEN_FILE={path}: cannot read it: {error.strerror}"
                ) from None
        return cls(**values)

    def openai_extra_body_json(self) -> dict[str, Any]:
        """`openai_extra_body` parsed; ValueError when it is not a JSON object."""
        if not self.openai_extra_body.strip():
            return {}
        try:
            value = json.loads(self.openai_extra_body)
        except json.JSONDecodeError as error:
            raise ValueError(f"BITWARE_OPENAI_EXTRA_BODY is not JSON: {error}") from None
        if not isinstance(value, dict):
            raise ValueError("BITWARE_OPENAI_EXTRA_BODY must be a JSON object")
        return value

    @property
    def extra_capability_set(self) -> frozenset[str]:
        return frozenset(filter(None, (c.strip() for c in self.extra_capabilities.split(","))))

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert and self.tls_key)

    def database_url_for(self, service: str) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / f'{service}.db').resolve()}"
