"""The granulator's domain errors.

MeshError (bitware_core.errors)
├── NotFound
│   ├── JobNotFound
│   └── TemplateNotFound
└── FailedPrecondition
    └── NoReservation          (reason NO_RESERVATION: Process without an accepted offer)
"""

from __future__ import annotations

from bitware_core.errors import FailedPrecondition, NotFound


class JobNotFound(NotFound):
    reason = "JOB_NOT_FOUND"


class TemplateNotFound(NotFound):
    reason = "TEMPLATE_NOT_FOUND"


class NoReservation(FailedPrecondition):
    reason = "NO_RESERVATION"
