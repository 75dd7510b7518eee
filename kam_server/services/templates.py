"""TemplateService: the versioned master templates."""

from __future__ import annotations

from bitware.kam.v1 import templates_pb2, templates_pb2_grpc
from bitware_core.auth import current_principal
from bitware_core.db import Database
from bitware_core.errors import Violations
from bitware_core.server import Context
from kam_server import catalog, messages
from kam_server.services import Handlers


class TemplateHandlers(Handlers, templates_pb2_grpc.TemplateServiceServicer):
    def __init__(self, db: Database, extra_capabilities: frozenset[str]) -> None:
        super().__init__(db)
        self.extra_capabilities = extra_capabilities

    async def CreateMasterTemplate(
        self, request: templates_pb2.CreateMasterTemplateRequest, context: Context
    ) -> templates_pb2.CreateMasterTemplateResponse:
        actor = current_principal()
        new = messages.template_from_proto(request.template)
        row = await self.db.run(lambda s: catalog.create(s, actor, new, self.extra_capabilities))
        return templates_pb2.CreateMasterTemplateResponse(template=messages.template_to_proto(row))

    async def GetMasterTemplate(
        self, request: templates_pb2.GetMasterTemplateRequest, context: Context
    ) -> templates_pb2.GetMasterTemplateResponse:
        problems = Violations()
        problems.check(bool(request.name), "name", "is required")
        problems.check(request.version >= 0, "version", "must not be negative")
        problems.raise_if_any()
        row = await self.db.run_tx(lambda tx: catalog.get(tx, request.name, request.version))
        return templates_pb2.GetMasterTemplateResponse(template=messages.template_to_proto(row))

    async def ListMasterTemplates(
        self, request: templates_pb2.ListMasterTemplatesRequest, context: Context
    ) -> templates_pb2.ListMasterTemplatesResponse:
        rows, token = await self.db.run(
            lambda s: catalog.list_latest(
                s, request.page_size, request.page_token, request.include_deprecated
            )
        )
        return templates_pb2.ListMasterTemplatesResponse(
            templates=[messages.template_to_proto(r) for r in rows], next_page_token=token
        )

    async def DeprecateMasterTemplate(
        self, request: templates_pb2.DeprecateMasterTemplateRequest, context: Context
    ) -> templates_pb2.DeprecateMasterTemplateResponse:
        actor = current_principal()
        row = await self.db.run(lambda s: catalog.deprecate(s, actor, request.name))
        return templates_pb2.DeprecateMasterTemplateResponse(
            template=messages.template_to_proto(row)
        )
