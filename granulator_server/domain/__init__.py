"""Domain logic of the granulator: templates, offline generation, validation, quality, elements.

Pure Python with no gRPC or storage imports, so the service layer and tests use it directly.
"""

from bitware_core.domain import Violation
from granulator_server.domain.elements import Element, count_by_kind, to_elements
from granulator_server.domain.offline import generate_offline
from granulator_server.domain.rules import ValidationRules
from granulator_server.domain.templates import (
    SEED_TEMPLATES,
    STRUCTURE_TYPES,
    StructureTemplate,
    build_prompt,
    expected_counts,
    match_template,
)
from granulator_server.domain.validation import QualityReport, score_quality, validate

__all__ = [
    "SEED_TEMPLATES",
    "STRUCTURE_TYPES",
    "Element",
    "QualityReport",
    "StructureTemplate",
    "ValidationRules",
    "Violation",
    "build_prompt",
    "count_by_kind",
    "expected_counts",
    "generate_offline",
    "match_template",
    "score_quality",
    "to_elements",
    "validate",
]
