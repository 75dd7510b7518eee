"""Starting a whole mesh in one process (tests, benchmarks): KAM, orchestrator and one or more
granulators on free loopback ports, with fresh credentials generated for this mesh."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from bitware_core.auth import hash_secret, new_secret
from bitware_core.config import QueueSettings, Settings

if TYPE_CHECKING:
    from granulator_server.server import GranulatorServer
    from kam_server.server import KamServer
    from orchestrator_server.server import OrchestratorServer


@dataclass(frozen=True)
class MeshCredentials:
    """Fresh secrets for one mesh: the admin's password and each service's token."""

    admin_email: str = "admin@bitware.local"
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    tokens: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def generate(cls, granulators: int = 1) -> MeshCredentials:
        ids = [
            "kam",
            "orchestrator",
            "gateway",
            *(f"granulator-{i + 1}" for i in range(granulators)),
        ]
        return cls(tokens={worker_id: new_secret("bwt_") for worker_id in ids})

    def bootstrap_list(self) -> str:
        """What KAM installs: ids, kinds and token hashes, never the tokens."""
        return ",".join(
            f"{worker_id}:{'worker' if worker_id.startswith('granulator') else 'service'}:"
            f"{hash_secret(token)}"
            for worker_id, token in self.tokens.items()
        )

    def settings_for(self, base: Settings, worker_id: str) -> Settings:
        auth = replace(base.auth, worker_id=worker_id, worker_token=self.tokens[worker_id])
        return replace(base, auth=auth)

    def kam_settings(self, base: Settings, data_dir: Path) -> Settings:
        """KAM's settings: its own credential, and the others' hashes and the first admin to
        create on a new database."""
        kam = replace(
            base.kam,
            bootstrap_credentials=self.bootstrap_list(),
            bootstrap_admin_email=self.admin_email,
            bootstrap_admin_password=self.admin_password,
        )
        settings = self.settings_for(base, "kam")
        return replace(settings, storage=replace(base.storage, data_dir=data_dir), kam=kam)


@dataclass
class InProcessMesh:
    kam: KamServer
    orchestrator: OrchestratorServer
    granulators: list[GranulatorServer]
    credentials: MeshCredentials

    async def stop(self) -> None:
        for server in [*self.granulators, self.orchestrator, self.kam]:
            stopping = asyncio.create_task(server.stop(0.5))
            done, _ = await asyncio.wait([stopping], timeout=20)
            if not done:  # say which server hung, and where, instead of hanging the caller
                stopping.print_stack()
                stopping.cancel()
                raise RuntimeError(f"{type(server).__name__} did not stop within 20 s")


async def start_mesh(
    data_dir: Path, base: Settings | None = None, granulators: int = 1
) -> InProcessMesh:
    from granulator_server.server import serve as serve_granulator
    from kam_server.server import serve as serve_kam
    from orchestrator_server.server import serve as serve_orchestrator

    base = base or Settings(queue=QueueSettings(heartbeat_interval=0.5))
    credentials = MeshCredentials.generate(granulators)
    kam = await serve_kam(credentials.kam_settings(base, data_dir))
    orchestrator = await serve_orchestrator(
        replace(
            credentials.settings_for(base, "orchestrator"),
            storage=replace(base.storage, data_dir=data_dir),
            peers=replace(base.peers, kam_address=kam.address),
        )
    )
    kam.orchestrator.connect(orchestrator.address)
    workers = []
    for index in range(granulators):
        worker_id = f"granulator-{index + 1}"
        workers.append(
            await serve_granulator(
                replace(
                    credentials.settings_for(base, worker_id),
                    storage=replace(base.storage, data_dir=data_dir / worker_id),
                    peers=replace(
                        base.peers,
                        kam_address=kam.address,
                        orchestrator_address=orchestrator.address,
                    ),
                )
            )
        )
    return InProcessMesh(kam, orchestrator, workers, credentials)
