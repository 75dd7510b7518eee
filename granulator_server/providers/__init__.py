"""Where structures come from: the `offline` provider (no key needed) and the `openai` provider
(any OpenAI-compatible endpoint), behind one interface. `choose_provider` picks one from config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bitware_core.config import Settings
from granulator_server.pricing import PriceTable
from granulator_server.providers.base import (
    Generation,
    Judgement,
    ModelMetrics,
    ProgressCallback,
    Provider,
    UsageMeter,
)
from granulator_server.providers.offline import OfflineProvider

if TYPE_CHECKING:
    from granulator_server.providers.openai_chat import OpenAIProvider


def __getattr__(name: str) -> Any:
    # The `openai` package takes ~1 s to import: only when the openai provider is wanted.
    if name == "OpenAIProvider":
        from granulator_server.providers.openai_chat import OpenAIProvider

        return OpenAIProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def choose_provider(
    settings: Settings, prices: PriceTable, metrics: ModelMetrics | None = None
) -> Provider:
    """The `openai` provider when endpoints, a key or a base URL are configured, else the
    offline one (which calls no model). Raises ValueError for settings that do not make sense."""
    if settings.providers.endpoints or settings.openai.api_key or settings.openai.base_url:
        from granulator_server.providers.openai_chat import OpenAIProvider

        return OpenAIProvider.from_settings(settings, prices, metrics=metrics)
    return OfflineProvider()


__all__ = [
    "Generation",
    "Judgement",
    "ModelMetrics",
    "OfflineProvider",
    "OpenAIProvider",
    "ProgressCallback",
    "Provider",
    "UsageMeter",
    "choose_provider",
]
