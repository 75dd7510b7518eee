"""What model tokens cost: a per-model price table in US dollars per million tokens.

The built-in table covers common OpenAI models; `BITWARE_PRICE_TABLE` (read once at start-up by
`server.py`) adds or overrides entries with JSON such as
``{"my-model": {"input": 0.5, "output": 1.5}}``. A dated model name such as
``gpt-4o-mini-2024-07-18`` is priced by its longest listed prefix; a model the table does not
know costs 0 (and says so in the log once), and the offline provider always costs 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from bitware_core.config import json_setting

log = logging.getLogger("bitware.granulator.pricing")

PRICE_TABLE_ENV = "BITWARE_PRICE_TABLE"


@dataclass(frozen=True)
class Price:
    """US dollars per million prompt (`input`) and completion (`output`) tokens."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return round((prompt_tokens * self.input + completion_tokens * self.output) / 1e6, 8)


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
}


@dataclass
class PriceTable:
    prices: dict[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    _unknown_logged: set[str] = field(default_factory=set)

    @classmethod
    def with_overrides(cls, raw: str) -> PriceTable:
        """The default table with `raw` (`ProviderSettings.price_table`, JSON) merged over it.

        Raises ValueError when `raw` is not a JSON object of
        ``{"model": {"input": number, "output": number}}``.
        """
        table = cls()
        if raw.strip():
            table.prices.update(parse_prices(raw))
        return table

    def price_of(self, model: str) -> Price | None:
        for name in sorted(self.prices, key=len, reverse=True):
            if model == name or model.startswith(f"{name}-"):
                return self.prices[name]
        return None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        price = self.price_of(model)
        if price is None:
            if model not in self._unknown_logged:
                self._unknown_logged.add(model)
                log.warning("no price for model; its cost is recorded as 0", extra={"model": model})
            return 0.0
        return price.cost(prompt_tokens, completion_tokens)


def parse_prices(raw: str) -> dict[str, Price]:
    data = json_setting(PRICE_TABLE_ENV, raw, dict, "a JSON object of model → prices")
    prices = {}
    for model, entry in data.items():
        try:
            prices[str(model)] = Price(float(entry["input"]), float(entry["output"]))
        except (TypeError, KeyError, ValueError):
            raise ValueError(
                f"{PRICE_TABLE_ENV}[{model!r}] must be {{'input': number, 'output': number}}"
            ) from None
    return prices
