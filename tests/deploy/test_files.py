"""The deployment files stay true to the code: there is no container engine or cluster here, so
these tests check the files themselves. YAML parses; every BITWARE_* name they set is the
variable of a field of a `Settings` group, and its value is one that field accepts; every
command is a real `bitware` command; probes, Services and addresses point at the ports the
servers are told to serve on; every secret they read is one that deploy/make_env.py writes (or
kustomize generates from it); the Dockerfile passes hadolint and copies every package the
project ships."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bitware_core.auth import hash_secret
from bitware_core.config import Settings
from bitware_mesh.cli import parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
HADOLINT = Path(sys.executable).parent / "hadolint"

sys.path.insert(0, str(DEPLOY))
import make_env  # noqa: E402


def settings_fields() -> dict[str, tuple[str, str]]:
    """Each variable a field of a `Settings` group names → (group, field), from the groups."""
    defaults = Settings()
    return {
        f.metadata["env"]: (group.name, f.name)
        for group in dataclasses.fields(Settings)
        for f in dataclasses.fields(getattr(defaults, group.name))
    }


SETTINGS = settings_fields()
#: The port each server is reached on, as the shared addresses name it.
SERVER_PORTS = {"kam": 50051, "orchestrator": 50052, "granulator": 50053, "gateway": 8080}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def manifests() -> list[dict[str, Any]]:
    """Every object of every file kustomization.yaml lists."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    objects = []
    for name in kustomization["resources"]:
        objects += [o for o in yaml.safe_load_all((KUBERNETES / name).read_text()) if o]
    return objects


def pod_specs(
    objects: list[dict[str, Any]] | None = None,
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) of every Deployment, StatefulSet and Job."""
    for item in manifests() if objects is None else objects:
        if item["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield item, item["spec"]["template"]["spec"]


def secrets_read(objects: list[dict[str, Any]]) -> set[str]:
    """The names of the Secrets that the pods of `objects` read (env or mounted files)."""
    read = set()
    for _, spec in pod_specs(objects):
        for container in spec["containers"]:
            read |= {s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s}
        read |= {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    return read


def container_env(container: dict[str, Any], config: dict[str, str]) -> dict[str, str]:
    """What a container's environment holds, from the ConfigMap it reads and its own `env`."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config)
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<from the downward API>")
    return env


def config_map() -> dict[str, str]:
    (found,) = [o for o in manifests() if o["kind"] == "ConfigMap"]
    data: dict[str, str] = found["data"]
    return data


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def dockerfile_env() -> dict[str, str]:
    """Names and values of the runtime stage's ENV lines (continuations joined)."""
    text = dockerfile().replace("\\\n", " ")
    runtime = text.rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def server_of(command: list[str]) -> str:
    """`kam` for ["serve", "kam"]; the command must parse as a real `bitware` command."""
    args = parser().parse_args(command)
    return str(args.server) if args.command == "serve" else str(args.command)


# ---------------------------------------------------------------- the files parse


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert DEPLOY / "compose.yaml" in files and len(files) > 5
    for path in files:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert documents, path
        assert all(isinstance(d, dict) for d in documents), path


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


# ---------------------------------------------------------------- names and commands


def every_env_setting() -> list[tuple[str, str | None, str]]:
    """(name, value, where) of each BITWARE_* variable set anywhere; value None when it comes
    from the downward API."""
    found: list[tuple[str, str | None, str]] = []

    def note(values: dict[str, Any], where: str) -> None:
        for name, value in values.items():
            if name.startswith("BITWARE_"):
                found.append((name, None if value is None else str(value), where))

    note(dockerfile_env(), "Dockerfile")
    for name, service in compose()["services"].items():
        note(service.get("environment", {}), f"compose {name}")
    note(config_map(), "ConfigMap")
    for item, spec in pod_specs():
        for container in spec["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            note(env, item["metadata"]["name"])
    for name, content in make_env.make_files(3, "").items():
        note(dict(re.findall(r"^(\w+)=(.*)$", content, re.MULTILINE)), name)
    return found


def every_env_name() -> dict[str, set[str]]:
    """Each BITWARE_* name set anywhere → where."""
    found: dict[str, set[str]] = {}
    for name, _, where in every_env_setting():
        found.setdefault(name, set()).add(where)
    return found


def test_every_env_name_is_a_setting() -> None:
    found = every_env_name()
    assert "BITWARE_WORKER_TOKEN_FILE" in found and "BITWARE_BOOTSTRAP_CREDENTIALS" in found
    unknown = {name: sorted(where) for name, where in found.items() if name not in SETTINGS}
    assert not unknown, f"not fields of a bitware_core.config.Settings group: {unknown}"
    listed = {name: tuple(path.split(".")) for name, path in Settings.variables().items()}
    assert listed == SETTINGS


def test_every_env_value_is_one_its_field_accepts() -> None:
    """Read as the servers read them: a value of the wrong type or outside a field's choices
    would stop the server (exit 2) in the deployment only."""
    for name, value, where in every_env_setting():
        if value is None or name not in SETTINGS:
            continue  # the downward API's; unknown names fail the test above
        environ = {name: value}
        if name == "BITWARE_WORKER_TOKEN_FILE":  # the file exists in the pod only
            environ["BITWARE_WORKER_TOKEN"] = "bwt_mounted"
        group, field = SETTINGS[name]
        read = getattr(getattr(Settings.from_env(environ), group), field)
        assert str(read).lower() == value.lower(), (name, where)


def test_every_command_is_a_real_bitware_command() -> None:
    commands = [
        service["command"] for service in compose()["services"].values() if "command" in service
    ]
    for _, spec in pod_specs():
        commands += [c["args"] for c in spec["containers"]]
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile(), re.MULTILINE)
    assert cmd is not None
    commands.append(yaml.safe_load(cmd.group(1)))
    servers = {server_of(command) for command in commands}
    assert servers == {"kam", "orchestrator", "granulator", "gateway", "migrate"}
    assert re.search(r'^ENTRYPOINT \["bitware"\]$', dockerfile(), re.MULTILINE)


def test_a_misspelt_command_would_be_caught() -> None:
    with pytest.raises(SystemExit):
        server_of(["serve", "granulater"])


# ---------------------------------------------------------------- ports and probes


def test_compose_addresses_and_ports_agree() -> None:
    services = compose()["services"]
    shared = dict(services["kam"]["environment"])
    assert port_of(shared["BITWARE_KAM_ADDRESS"]) == SERVER_PORTS["kam"]
    assert shared["BITWARE_ORCHESTRATOR_ADDRESS"] == "dns:///orchestrator:50052"
    assert port_of(shared["BITWARE_GRANULATOR_ADDRESS"]) == SERVER_PORTS["granulator"]
    granulators = []
    for name, service in services.items():
        if name in {"postgres", "migrate"}:
            continue
        server = server_of(service["command"])
        env = service["environment"]
        assert int(env["BITWARE_PORT"]) == SERVER_PORTS[server], name
        assert env["BITWARE_KAM_ADDRESS"] == shared["BITWARE_KAM_ADDRESS"], name
        if server == "granulator":
            granulators.append(name)
            # The orchestrator calls each granulator where it says it is: its own name.
            assert env["BITWARE_ADVERTISE_ADDRESS"] == f"{name}:{SERVER_PORTS['granulator']}"
            assert "granulator" in service["networks"]["default"]["aliases"]
    assert len(granulators) == 3
    assert services["orchestrator"]["deploy"]["replicas"] == 2
    published = services["gateway"]["ports"][0]
    assert port_of(published) == SERVER_PORTS["gateway"]
    assert services["gateway"]["healthcheck"]["test"] == ["CMD", "bitware", "health", "--http"]


def test_compose_starts_servers_after_the_migration() -> None:
    services = compose()["services"]
    assert server_of(services["migrate"]["command"]) == "migrate"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in services.items():
        if name not in {"postgres", "migrate"}:
            assert service["depends_on"]["migrate"]["condition"] == (
                "service_completed_successfully"
            ), name


def test_kubernetes_probes_and_services_point_at_served_ports() -> None:
    config = config_map()
    services = {o["metadata"]["name"]: o for o in manifests() if o["kind"] == "Service"}
    seen = set()
    for item, spec in pod_specs():
        (container,) = spec["containers"]
        server = server_of(container["args"])
        if server == "migrate":
            continue
        seen.add(server)
        env = container_env(container, config)
        port = int(env["BITWARE_PORT"])
        assert port == SERVER_PORTS[server], item["metadata"]["name"]
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert port in named.values()
        for probe in ("readinessProbe", "livenessProbe"):
            check = container[probe]
            if server == "gateway":
                target = check.get("httpGet") or check.get("tcpSocket")
            else:
                target = check["grpc"]  # gRPC health, served by every gRPC server
            assert target["port"] == port, (server, probe)
        if metrics := env.get("BITWARE_METRICS_ADDRESS"):
            assert named["metrics"] == port_of(metrics)
        # The Service named after the server reaches that port, under the name others use.
        service = services[server]
        assert service["spec"]["selector"] == item["spec"]["selector"]["matchLabels"]
        (service_port,) = service["spec"]["ports"]
        assert named[service_port["targetPort"]] == port
        if server != "gateway":
            assert service["spec"]["clusterIP"] == "None"  # headless: dns:/// sees each pod
            address = config[f"BITWARE_{server.upper()}_ADDRESS"]
            assert address == f"dns:///{server}:{service_port['port']}"
    assert seen == {"kam", "orchestrator", "granulator", "gateway"}


def test_kubernetes_env_references_resolve() -> None:
    """`$(POD_NAME)` in a value needs POD_NAME defined before it in the same container."""
    for _, spec in pod_specs():
        for container in spec["containers"]:
            defined: set[str] = set()
            for item in container.get("env", []):
                for name in re.findall(r"\$\((\w+)\)", item.get("value", "")):
                    assert name in defined, (container["name"], item["name"])
                defined.add(item["name"])


def test_granulators_scale_with_an_identity_each() -> None:
    (stateful,) = [o for o in manifests() if o["kind"] == "StatefulSet"]
    (hpa,) = [o for o in manifests() if o["kind"] == "HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", stateful["metadata"]["name"])
    # make_env.py's default mints a token for every pod the autoscaler may start.
    assert hpa["spec"]["maxReplicas"] == make_env.DEFAULT_GRANULATORS
    files = make_env.make_files(make_env.DEFAULT_GRANULATORS, "")
    tokens = dict(re.findall(r"^([\w-]+)=(\S+)$", files["granulator-tokens.env"], re.MULTILINE))
    assert sorted(tokens) == [f"granulator-{i}" for i in range(make_env.DEFAULT_GRANULATORS)]
    (container,) = stateful["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    assert env["BITWARE_WORKER_ID"] == "$(POD_NAME)"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tokens")
    assert env["BITWARE_WORKER_TOKEN_FILE"] == f"{mount['mountPath']}/$(POD_NAME)"


# ---------------------------------------------------------------- secrets


def test_every_secret_read_is_generated_from_make_env_files() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    generated = {g["name"]: g["envs"] for g in kustomization["secretGenerator"]}
    written = set(make_env.make_files(8, "postgresql+psycopg://u:p@db:5432/bitware"))
    for envs in generated.values():
        assert {Path(e).name for e in envs} <= written
        assert all(e.startswith("env/") for e in envs)  # deploy/kubernetes/env/, next to it
    assert secrets_read(manifests()) == set(generated)
    compose_files = {f for s in compose()["services"].values() for f in s.get("env_file", [])}
    assert {Path(f).name for f in compose_files} <= set(make_env.make_files(3, ""))


def test_make_env_gives_kam_the_hash_of_every_token() -> None:
    files = make_env.make_files(3, "")
    env = {
        name: dict(re.findall(r"^(\w+)=(.*)$", content, re.MULTILINE))
        for name, content in files.items()
    }
    installed = {
        worker_id: (kind, digest)
        for worker_id, kind, digest in (
            entry.split(":") for entry in env["kam.env"]["BITWARE_BOOTSTRAP_CREDENTIALS"].split(",")
        )
    }
    for name in ["orchestrator", "gateway", "granulator-0", "granulator-2"]:
        worker_id, token = (
            env[f"{name}.env"]["BITWARE_WORKER_ID"],
            env[f"{name}.env"]["BITWARE_WORKER_TOKEN"],
        )
        kind = "worker" if name.startswith("granulator") else "service"
        assert installed[worker_id] == (kind, hash_secret(token))
    assert env["kam.env"]["BITWARE_BOOTSTRAP_ADMIN_PASSWORD"]
    password = env["postgres.env"]["POSTGRES_PASSWORD"]
    assert f"bitware:{password}@postgres:5432" in env["database.env"]["BITWARE_DATABASE_URL"]
    # Fresh secrets each time: nothing is built in.
    assert make_env.make_files(3, "")["kam.env"] != files["kam.env"]


def test_make_env_writes_private_files_once(tmp_path: Path) -> None:
    folder = tmp_path / "env"
    assert make_env.main([str(folder), "--granulators", "3"]) == 0
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o600}
    before = (folder / "kam.env").read_text()
    assert make_env.main([str(folder)]) == 1  # would lock out running services
    assert (folder / "kam.env").read_text() == before


def test_kustomize_renders_the_manifests(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the checks above still ran)")
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copy)
    make_env.main([str(copy / "env"), "--database-url", "postgresql+psycopg://u:p@db/bitware"])
    rendered = subprocess.run(
        [kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
    secrets = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    # Generated names carry a content hash, and every reference was rewritten to it.
    assert all(re.fullmatch(r"bitware-[a-z-]+-[a-z0-9]{10}", name) for name in secrets)
    assert secrets_read(objects) == secrets
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    assert all(o["metadata"].get("namespace") == "bitware" for o in namespaced)


# ---------------------------------------------------------------- the Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install grpcio\nUSER root\n")
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # `latest`


def test_dockerfile_builds_in_stages_and_runs_unprivileged() -> None:
    text = dockerfile()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", text, re.MULTILINE)
    assert len(stages) == 2 and stages[0][1] == "build"
    assert "COPY --from=build /opt/bitware /opt/bitware" in text
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert re.search(r'^HEALTHCHECK .* CMD \["bitware", "health"\]$', text, re.MULTILINE)
    assert "curl" not in text and "wget" not in text and "ADD http" not in text
    env = dockerfile_env()
    assert env["BITWARE_HOST"] == "0.0.0.0"
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.*)$", text, re.MULTILINE)[0].split()}
    assert exposed == set(SERVER_PORTS.values())


def test_dockerfile_copies_every_package_the_project_ships() -> None:
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    roots = {root for root in found["find"]["where"] if root != "."}  # protos/, client/
    packages = {p.rstrip("*") for p in found["find"]["include"]}
    top_level = {p for p in packages if (ROOT / p).is_dir()}
    copied = set(re.findall(r"^COPY (\w+)/ \1/$", dockerfile(), re.MULTILINE))
    assert top_level | roots == copied


def test_the_build_stage_files_make_a_complete_package(tmp_path: Path) -> None:
    """What the build stage copies is enough: a wheel built from exactly those files holds the
    `bitware` command, the generated protos, every migration and the dashboard."""
    context = tmp_path / "context"
    build_stage = dockerfile().split("\nFROM ")[1]
    for line in re.findall(r"^COPY (?!--)(.+)$", build_stage, re.MULTILINE):
        *sources, _ = line.split()
        for source in sources:
            if source.endswith("/"):
                shutil.copytree(
                    ROOT / source,
                    context / source,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
                )
            else:
                context.mkdir(exist_ok=True)
                shutil.copy(ROOT / source, context / source)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    built = subprocess.run(
        [*pip, "-w", str(tmp_path / "wheel"), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "bitware = bitware_mesh.cli:main" in archive.read(entry_points).decode()
    for service in ("kam", "orchestrator", "granulator"):
        versions = [n for n in names if n.startswith(f"{service}_server/migrations/versions/")]
        on_disk = list((ROOT / f"{service}_server/migrations/versions").glob("*.py"))
        assert len(versions) == len(on_disk) > 0, service
        assert f"{service}_server/migrations/script.py.mako" in names
    assert {"gateway/dashboard/index.html", "bitware/kam/v1/requests_pb2.py"} <= names
