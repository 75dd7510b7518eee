"""Translations between KAM's protobuf messages and its tables or logic inputs, shared by the
handlers (the logic never sees protobuf)."""

from __future__ import annotations

from google.protobuf import field_mask_pb2

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2, requests_pb2, templates_pb2
from bitware_core import convert
from bitware_core.domain import RetryPolicy, StageDefinition, Usage
from kam_server import catalog, ledger, models


def mask_paths(mask: field_mask_pb2.FieldMask) -> list[str]:
    return list(dict.fromkeys(mask.paths))


def tier(value: int, field: str) -> str:
    return convert.checked_enum(common_pb2.Tier, value, "TIER_", field)


def role(value: int, field: str) -> str:
    return convert.checked_enum(common_pb2.Role, value, "ROLE_", field)


def client_status(value: int, field: str) -> str:
    return convert.checked_enum(accounts_pb2.ClientStatus, value, "CLIENT_STATUS_", field)


# --- accounts -------------------------------------------------------------------------------


def user_to_proto(row: models.User) -> accounts_pb2.User:
    return accounts_pb2.User(
        user_id=row.id,
        email=row.email,
        display_name=row.display_name,
        role=convert.enum_value(common_pb2.Role, row.role, "ROLE_"),
        client_id=row.client_id or "",
        active=row.active,
        create_time=convert.timestamp(row.created_at),
        last_login_time=convert.timestamp(row.last_login_at),
    )


def client_to_proto(row: models.Client) -> accounts_pb2.Client:
    return accounts_pb2.Client(
        client_id=row.id,
        company_name=row.company_name,
        contact_email=row.contact_email,
        tier=convert.enum_value(common_pb2.Tier, row.tier, "TIER_"),
        monthly_budget_usd=row.monthly_budget_usd,
        status=convert.enum_value(accounts_pb2.ClientStatus, row.status, "CLIENT_STATUS_"),
        industry=row.industry,
        company_size=row.company_size,
        create_time=convert.timestamp(row.created_at),
    )


def api_key_to_proto(row: models.ApiKey) -> accounts_pb2.ApiKey:
    return accounts_pb2.ApiKey(
        api_key_id=row.id,
        client_id=row.client_id,
        name=row.name,
        prefix=row.prefix,
        create_time=convert.timestamp(row.created_at),
        last_used_time=convert.timestamp(row.last_used_at),
        revoked=row.revoked,
        expire_time=convert.timestamp(row.expires_at),
        scopes=row.scopes,
    )


def credential_to_proto(row: models.WorkerCredential) -> accounts_pb2.WorkerCredentialInfo:
    return accounts_pb2.WorkerCredentialInfo(
        worker_id=row.worker_id,
        kind=convert.enum_value(common_pb2.PrincipalKind, row.kind, "PRINCIPAL_KIND_"),
        create_time=convert.timestamp(row.created_at),
        rotate_time=convert.timestamp(row.rotated_at),
        revoked=row.revoked,
    )


def audit_to_proto(row: models.AuditEvent) -> accounts_pb2.AuditEvent:
    return accounts_pb2.AuditEvent(
        audit_event_id=row.id,
        time=convert.timestamp(row.at),
        actor=row.actor,
        action=row.action,
        target=row.target,
        details=row.details,
    )


def usage_line(line: ledger.Line) -> accounts_pb2.UsageLine:
    return accounts_pb2.UsageLine(
        key=line.key,
        spent_usd=line.spent_usd,
        reserved_usd=line.reserved_usd,
        executions=line.executions,
        usage=line.usage.to_proto(),
    )


def usage_to_proto(usage: ledger.MonthUsage) -> accounts_pb2.GetUsageResponse:
    return accounts_pb2.GetUsageResponse(
        client_id=usage.client_id,
        monthly_budget_usd=usage.monthly_budget_usd,
        spent_usd=usage.spent_usd,
        reserved_usd=usage.reserved_usd,
        remaining_usd=usage.remaining_usd,
        by_template=[usage_line(line) for line in usage.by_template],
        by_request=[usage_line(line) for line in usage.by_request],
        requests_this_month=usage.requests_this_month,
        alerts=[budget_alert(event) for event in usage.alerts],
    )


def budget_alert(event: models.AuditEvent) -> accounts_pb2.BudgetAlert:
    return accounts_pb2.BudgetAlert(
        percent=int(event.details.get("percent", 0)),
        time=convert.timestamp(event.at),
        spent_usd=float(event.details.get("spent_usd", 0.0)),
    )


# --- templates ------------------------------------------------------------------------------


def template_to_proto(row: models.MasterTemplate) -> templates_pb2.MasterTemplate:
    stages = [StageDefinition.from_json(stage).to_proto() for stage in row.stages]
    return templates_pb2.MasterTemplate(
        name=row.name,
        version=row.version,
        description=row.description,
        structure_type=convert.enum_value(
            common_pb2.StructureType, row.structure_type, "STRUCTURE_TYPE_"
        ),
        stages=stages,
        allowed_tiers=[convert.enum_value(common_pb2.Tier, t, "TIER_") for t in row.allowed_tiers],
        cost_estimate_usd=row.cost_estimate_usd,
        deprecated=row.deprecated,
        create_time=convert.timestamp(row.created_at),
        execution_timeout=convert.duration(row.execution_timeout_s),
    )


def _enum_or_marker(enum: object, value: int, prefix: str) -> str:
    """The lower-case enum name; unknown numbers and UNSPECIFIED become a marker the logic
    reports as a field violation together with every other problem."""
    try:
        return convert.enum_name(enum, value, prefix) or "unspecified"
    except ValueError:
        return f"unknown ({value})"


def template_from_proto(message: templates_pb2.MasterTemplate) -> catalog.TemplateInput:
    structure_type = _enum_or_marker(
        common_pb2.StructureType, message.structure_type, "STRUCTURE_TYPE_"
    )
    tiers = [_enum_or_marker(common_pb2.Tier, value, "TIER_") for value in message.allowed_tiers]
    stages = [
        catalog.StageInput(
            order=stage.order,
            name=stage.name,
            capability=stage.capability,
            action=stage.action,
            structure_template=stage.structure_template,
            params=dict(stage.params),
            timeout_s=convert.seconds(stage.timeout),
            retry_policy=(
                RetryPolicy.from_proto(stage.retry_policy)
                if stage.HasField("retry_policy")
                else None
            ),
            min_quality_score=stage.min_quality_score,
            review_again_below_quality=stage.review_again_below_quality,
        )
        for stage in message.stages
    ]
    return catalog.TemplateInput(
        name=message.name,
        description=message.description,
        structure_type=structure_type,
        stages=stages,
        allowed_tiers=tiers,
        cost_estimate_usd=message.cost_estimate_usd,
        execution_timeout_s=convert.seconds(message.execution_timeout),
    )


# --- requests -------------------------------------------------------------------------------


def request_to_proto(row: models.ClientRequest) -> requests_pb2.ClientRequest:
    return requests_pb2.ClientRequest(
        request_id=row.id,
        client_id=row.client_id,
        spec=convert.spec_to_proto(row.spec),
        master_template=row.master_template,
        template_version=row.template_version,
        urgency=convert.enum_value(requests_pb2.Urgency, row.urgency, "URGENCY_"),
        idempotency_key=row.idempotency_key or "",
        status=convert.enum_value(requests_pb2.RequestStatus, row.status, "REQUEST_STATUS_"),
        execution_id=row.execution_id,
        cost_usd=row.cost_usd if row.charged_at is not None else row.reserved_usd,
        reserved_usd=row.reserved_usd,
        job_id=row.job_id,
        error_message=row.error_message,
        usage=Usage.from_json(row.usage).to_proto(),
        create_time=convert.timestamp(row.created_at),
        update_time=convert.timestamp(row.updated_at),
        retries=row.retries,
    )
