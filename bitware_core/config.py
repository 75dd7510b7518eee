"""One typed configuration object, read once at start-up from `BITWARE_*` environment variables.

Every server and the CLI use the same `Settings`, made of small frozen groups by concern
(`settings.tls.cert`, `settings.queue.lease_seconds`, …); each process reads only the groups it
needs. Every field names the variable it is read from where it is defined (`Settings.variables()`
lists them all). Nothing here has a built-in secret: credentials come from the environment (set
by `bitware up`, which generates them) or are absent.

JSON-valued settings (`BITWARE_OPENAI_EXTRA_BODY`, `BITWARE_PROVIDERS`, `BITWARE_PRICE_TABLE`) are
kept as text here and read with `json_setting` by the module that gives them their meaning.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


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


def _env(variable: str, *choices: str, fallback: str = "") -> dict[str, Any]:
    """Metadata of a field: the variable it is read from, the only values it accepts (a `str`
    field; none means any), and a variable that stands in when that one is unset."""
    return {"env": variable, "choices": choices, "fallback": fallback}


def _parse(f: Field[Any], raw: str) -> Any:
    """The value `raw` of field `f`'s variable, or SettingsError saying what it accepts."""
    choices: tuple[str, ...] = f.metadata["choices"]
    accepts = ", ".join(choices) if choices else _ACCEPTS.get(str(f.type), "")
    try:
        value = _PARSERS[str(f.type)](raw)
    except ValueError:
        value = None
    if value is None or (choices and value not in choices):
        raise SettingsError(f"{f.metadata['env']}={raw!r} is not accepted: use {accepts}")
    return value


def json_setting(variable: str, raw: str, kind: type[T], must_be: str, *, empty: bool = True) -> T:
    """The JSON value `raw` of setting `variable` (the one reader of JSON-valued settings):
    ValueError `<variable> is not JSON: …`, or `<variable> must be <must_be>` when it is not a
    `kind` (or is empty, unless `empty`)."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"{variable} is not JSON: {error}") from None
    if not isinstance(value, kind) or not (empty or value):
        raise ValueError(f"{variable} must be {must_be}")
    return value


@dataclass(frozen=True)
class ServerSettings:
    """How this process serves."""

    #: Interface the server binds to. Loopback unless told otherwise.
    host: str = field(default="127.0.0.1", metadata=_env("BITWARE_HOST"))
    #: Port the server binds to; 0 picks a free one (the bound port is printed).
    port: int = field(default=0, metadata=_env("BITWARE_PORT"))
    #: The address other services should use to reach this server; empty means host:bound port.
    advertise_address: str = field(default="", metadata=_env("BITWARE_ADVERTISE_ADDRESS"))
    #: Seconds a server waits for in-flight calls on shutdown.
    shutdown_grace: float = field(default=5.0, metadata=_env("BITWARE_SHUTDOWN_GRACE"))
    #: Read more `BITWARE_NAME=value` lines from stdin, up to an empty line, before starting
    #: (they win over the environment); KAM then also takes `BITWARE_ORCHESTRATOR_ADDRESS=…`
    #: lines while it runs. `bitware up` sets it: it learns each server's port from its ready
    #: line and hands it to the servers that start after it.
    stdin_settings: bool = field(default=False, metadata=_env("BITWARE_STDIN_SETTINGS"))


@dataclass(frozen=True)
class StorageSettings:
    """Where this process keeps its data."""

    #: Folder for the embedded SQLite files and large stage outputs.
    data_dir: Path = field(default=Path("data"), metadata=_env("BITWARE_DATA_DIR"))
    #: SQLAlchemy URL of this service's database; empty means `sqlite:///<data_dir>/<service>.db`.
    database_url: str = field(default="", metadata=_env("BITWARE_DATABASE_URL"))

    def database_url_for(self, service: str) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / f'{service}.db').resolve()}"


@dataclass(frozen=True)
class PeerSettings:
    """The other services this process calls."""

    #: Address of KAM, host:port (every service asks KAM who a caller is).
    kam_address: str = field(default="", metadata=_env("BITWARE_KAM_ADDRESS"))
    #: Address of the orchestrator, host:port.
    orchestrator_address: str = field(default="", metadata=_env("BITWARE_ORCHESTRATOR_ADDRESS"))
    #: Gateway: the granulators' addresses, host:port, comma-separated; it reads jobs and
    #: structures from whichever answers (every granulator of a mesh shares one job store).
    granulator_address: str = field(default="", metadata=_env("BITWARE_GRANULATOR_ADDRESS"))
    #: Deadline of one internal call between services, in seconds.
    rpc_timeout: float = field(default=10.0, metadata=_env("BITWARE_RPC_TIMEOUT"))


@dataclass(frozen=True)
class AuthSettings:
    """Who this process is to the others, and how long it trusts who its callers are."""

    #: This process's own worker or service id (`x-worker-id`).
    worker_id: str = field(default="", metadata=_env("BITWARE_WORKER_ID"))
    #: This process's own token (`authorization: Bearer`). Never logged.
    worker_token: str = field(default="", repr=False, metadata=_env("BITWARE_WORKER_TOKEN"))
    #: A file holding this process's token (a mounted Kubernetes or Docker secret), read at
    #: start-up when worker_token is empty.
    worker_token_file: str = field(default="", metadata=_env("BITWARE_WORKER_TOKEN_FILE"))
    #: How long a verified credential is trusted without asking KAM again, in seconds (≤ 30).
    cache_seconds: float = field(default=10.0, metadata=_env("BITWARE_AUTH_CACHE_SECONDS"))


@dataclass(frozen=True)
class TLSSettings:
    """Transport security of every server and channel; all empty means plaintext."""

    #: PEM certificate of this server (and of its client side for mutual TLS). Empty = plaintext.
    cert: str = field(default="", metadata=_env("BITWARE_TLS_CERT"))
    #: PEM private key for cert.
    key: str = field(default="", metadata=_env("BITWARE_TLS_KEY"))
    #: PEM CA bundle: servers require client certificates signed by it; channels verify with it.
    ca: str = field(default="", metadata=_env("BITWARE_TLS_CA"))

    @property
    def enabled(self) -> bool:
        return bool(self.cert and self.key)


@dataclass(frozen=True)
class KamSettings:
    """KAM only: what it installs on start and what templates may name."""

    #: Credentials to install on start, `id:kind:sha256hex` comma-separated (hashes only; kind
    #: is `worker` or `service`).
    bootstrap_credentials: str = field(default="", metadata=_env("BITWARE_BOOTSTRAP_CREDENTIALS"))
    #: Email of the first admin, created when no admin exists.
    bootstrap_admin_email: str = field(default="", metadata=_env("BITWARE_BOOTSTRAP_ADMIN_EMAIL"))
    #: Password of the first admin (hashed at once; never stored in plain text).
    bootstrap_admin_password: str = field(
        default="", repr=False, metadata=_env("BITWARE_BOOTSTRAP_ADMIN_PASSWORD")
    )
    #: Capabilities of workers other than the built-in granulator's (`granulate`, `validate`),
    #: comma-separated; master templates may name only known capabilities.
    extra_capabilities: str = field(default="", metadata=_env("BITWARE_EXTRA_CAPABILITIES"))

    @property
    def extra_capability_set(self) -> frozenset[str]:
        return frozenset(filter(None, (c.strip() for c in self.extra_capabilities.split(","))))


@dataclass(frozen=True)
class WebhookSettings:
    """KAM only: delivering events to the clients' webhook endpoints."""

    #: File holding the key that webhook signing secrets are derived from (each endpoint's
    #: secret is HMAC-SHA256 of its id under this key, so no secret is stored). Empty means
    #: `<data_dir>/webhook.key`, generated on first start; KAM replicas sharing one database
    #: must share this file.
    key_file: str = field(default="", metadata=_env("BITWARE_WEBHOOK_KEY_FILE"))
    #: Also accept `http://` webhook URLs on loopback hosts (tests, local development).
    #: Otherwise only `https://` to hosts that are not loopback, private or link-local addresses.
    allow_insecure: bool = field(default=False, metadata=_env("BITWARE_WEBHOOK_ALLOW_INSECURE"))
    #: Seconds before the first retry of a failed delivery; each next wait doubles, up to an
    #: hour; a delivery is given up 24 hours after its event.
    retry_base: float = field(default=10.0, metadata=_env("BITWARE_WEBHOOK_RETRY_BASE"))


@dataclass(frozen=True)
class ObservabilitySettings:
    """Logs and metrics (traces are configured by the standard `OTEL_*` variables, see
    `bitware_core.tracing`)."""

    #: host:port on which to serve Prometheus metrics at /metrics; empty means none.
    metrics_address: str = field(default="", metadata=_env("BITWARE_METRICS_ADDRESS"))
    #: Log as one JSON object per line instead of key=value text.
    log_json: bool = field(default=False, metadata=_env("BITWARE_LOG_JSON"))
    #: Logging level name: DEBUG, INFO, WARNING, ERROR or CRITICAL.
    log_level: str = field(
        default="INFO",
        metadata=_env("BITWARE_LOG_LEVEL", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    )


@dataclass(frozen=True)
class OpenAISettings:
    """Granulator: the OpenAI-compatible endpoint it calls, or the defaults of each endpoint
    `BITWARE_PROVIDERS` lists. `BITWARE_OPENAI_*`."""

    #: OpenAI-compatible endpoint; empty with an empty key means the offline provider. Falls
    #: back to the standard `OPENAI_BASE_URL`.
    base_url: str = field(
        default="", metadata=_env("BITWARE_OPENAI_BASE_URL", fallback="OPENAI_BASE_URL")
    )
    #: API key for the endpoint. Never logged. Falls back to the standard `OPENAI_API_KEY`.
    api_key: str = field(
        default="", repr=False, metadata=_env("BITWARE_OPENAI_API_KEY", fallback="OPENAI_API_KEY")
    )
    #: Model name.
    model: str = field(default="gpt-4o-mini", metadata=_env("BITWARE_OPENAI_MODEL"))
    #: Seconds one model call may take.
    timeout: float = field(default=60.0, metadata=_env("BITWARE_OPENAI_TIMEOUT"))
    #: Retries of one model call on 429, 5xx and timeouts.
    max_retries: int = field(default=2, metadata=_env("BITWARE_OPENAI_MAX_RETRIES"))
    #: How replies are held to the structure's JSON schema: `json_schema` (strict structured
    #: outputs), `json_object_schema` (llama.cpp's grammar), `json_object` (JSON mode, schema in
    #: the prompt), `prompt` (schema in the prompt only), or `auto`: the strongest the endpoint
    #: takes, stepping down when it rejects one. Replies are validated in every mode.
    structured: str = field(
        default="auto",
        metadata=_env(
            "BITWARE_OPENAI_STRUCTURED",
            *("auto", "json_schema", "json_object_schema", "json_object", "prompt"),
        ),
    )
    #: Token budget of one reply (`max_tokens`, always sent; doubled once for a cut-off reply).
    max_output_tokens: int = field(default=4096, metadata=_env("BITWARE_OPENAI_MAX_OUTPUT_TOKENS"))
    #: `frequency_penalty` sent with every call when not 0 (small local models repeat
    #: themselves); dropped for an endpoint that rejects it.
    frequency_penalty: float = field(default=0.0, metadata=_env("BITWARE_OPENAI_FREQUENCY_PENALTY"))
    #: JSON object merged into every request body, e.g. `{"repeat_penalty": 1.1}` for llama.cpp;
    #: dropped for an endpoint that rejects a parameter it names.
    extra_body: str = field(default="", metadata=_env("BITWARE_OPENAI_EXTRA_BODY"))

    def extra_body_json(self) -> dict[str, Any]:
        """`extra_body` parsed; ValueError when it is not a JSON object."""
        if not self.extra_body.strip():
            return {}
        return json_setting("BITWARE_OPENAI_EXTRA_BODY", self.extra_body, dict, "a JSON object")


@dataclass(frozen=True)
class ProviderSettings:
    """Granulator: several model endpoints with fail-over, and what their tokens cost."""

    #: Several OpenAI-compatible endpoints in order of preference, as a JSON list (replaces the
    #: `openai` endpoint; see granulator_server/providers/endpoints.py):
    #: `[{"name": "a", "base_url": "…/v1", "model": "m", "api_key_env": "A_KEY",
    #: "input_price": 0.15, "output_price": 0.6}, …]`. Keys only by variable name.
    endpoints: str = field(default="", metadata=_env("BITWARE_PROVIDERS"))
    #: Transient failures in a row (429, 5xx, timeouts) before an endpoint of `endpoints` cools
    #: down and calls move to the next.
    failures: int = field(default=3, metadata=_env("BITWARE_PROVIDER_FAILURES"))
    #: Seconds an endpoint cools down before it is used again.
    cooldown: float = field(default=60.0, metadata=_env("BITWARE_PROVIDER_COOLDOWN"))
    #: Prices per 1M tokens merged over the built-in table, as JSON
    #: `{"model": {"input": 0.15, "output": 0.6}}` (dated model names match by prefix).
    price_table: str = field(default="", metadata=_env("BITWARE_PRICE_TABLE"))


@dataclass(frozen=True)
class GranulatorSettings:
    """Granulator: how much work it takes on at once."""

    #: Stage attempts held at once, the capacity it registers with; further offers are declined
    #: as AT_CAPACITY. 0: `max_model_calls` with a model provider (an attempt mostly waits on
    #: the model), 4 with the offline provider (its work is all CPU).
    max_concurrent_jobs: int = field(default=0, metadata=_env("BITWARE_MAX_CONCURRENT_JOBS"))
    #: Model calls in flight at once, over all endpoints (more wait their turn); set it to what
    #: the provider's account allows. Rate-limit headers pace calls as well.
    max_model_calls: int = field(default=256, metadata=_env("BITWARE_MAX_MODEL_CALLS"))
    #: Attempts in their CPU-bound part at once (checking, scoring and storing a structure);
    #: 0: the machine's cores.
    cpu_jobs: int = field(default=0, metadata=_env("BITWARE_CPU_JOBS"))


@dataclass(frozen=True)
class QueueSettings:
    """Orchestrator: the stage queue, its leases and the health of the workers it offers
    stages to."""

    #: Seconds between worker heartbeats.
    heartbeat_interval: float = field(default=2.0, metadata=_env("BITWARE_HEARTBEAT_INTERVAL"))
    #: Seconds without a heartbeat before a worker is unhealthy.
    heartbeat_timeout: float = field(default=6.0, metadata=_env("BITWARE_HEARTBEAT_TIMEOUT"))
    #: Seconds a stage claim lives without renewal; a dead holder's stages are offered again
    #: after this.
    lease_seconds: float = field(default=15.0, metadata=_env("BITWARE_LEASE_SECONDS"))
    #: Seconds a stage may wait in the queue before its execution fails (time spent waiting for
    #: its client's turn, over the tier's concurrency limit, does not count).
    wait_timeout: float = field(default=3600.0, metadata=_env("BITWARE_QUEUE_WAIT_TIMEOUT"))


@dataclass(frozen=True)
class Settings:
    """Configuration of one process, by concern. Each group's fields name their variable."""

    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    peers: PeerSettings = field(default_factory=PeerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    kam: KamSettings = field(default_factory=KamSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    openai: OpenAISettings = field(default_factory=OpenAISettings)
    providers: ProviderSettings = field(default_factory=ProviderSettings)
    granulator: GranulatorSettings = field(default_factory=GranulatorSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads the `BITWARE_*` variables of every group. The standard `OPENAI_API_KEY` and
        `OPENAI_BASE_URL` stand in for unset `BITWARE_` ones."""
        env = os.environ if environ is None else environ
        groups: dict[str, Any] = {}
        for name, group in _groups():
            values: dict[str, Any] = {}
            for f in fields(group):
                raw = env.get(f.metadata["env"])
                if raw is None and f.metadata["fallback"]:
                    raw = env.get(f.metadata["fallback"])
                if raw is not None:
                    values[f.name] = _parse(f, raw)
            groups[name] = group(**values)
        auth: AuthSettings = groups["auth"]
        if auth.worker_token_file and not auth.worker_token:
            path = Path(auth.worker_token_file)
            try:
                token = path.read_text(encoding="utf-8").strip()
            except OSError as error:
                raise SettingsError(
                    f"BITWARE_WORKER_TOKEN_FILE={path}: cannot read it: {error.strerror}"
                ) from None
            groups["auth"] = replace(auth, worker_token=token)
        return cls(**groups)

    @staticmethod
    def variables() -> dict[str, str]:
        """Every variable read, and the field it sets: `{"BITWARE_TLS_CERT": "tls.cert", …}`."""
        return {
            f.metadata["env"]: f"{name}.{f.name}"
            for name, group in _groups()
            for f in fields(group)
        }


def _groups() -> list[tuple[str, type[Any]]]:
    """(name, class) of each group of `Settings`."""
    return [(f.name, type(getattr(_DEFAULTS, f.name))) for f in fields(Settings)]


_DEFAULTS = Settings()
