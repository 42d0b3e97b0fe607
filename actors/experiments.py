"""Experiments between model variants: who gets which variant, the variants' own models
and the click-through each variant earns, with 95% confidence intervals.  Pure, synchronous code (runtime/experiments.py wires it).

A user's variant is a seeded MurmurHash3 of the user id mapped onto the variants'
shares (in name order), so it is the same in every process and after every restart.
Every variant learns from every event; a variant that changes nothing of the base
config is served by the base model itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from actors.delayed import Resolved
from actors.murmur import murmur3_32
from actors.state import StateError, compose, restore
from runtime.config import ExperimentsConfig
from runtime.messages import POSITIVE

if TYPE_CHECKING:
    from actors.model import Model
    from actors.ranker import Ranker

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile
VARIANT_STATE = "experiment variant"


def wilson_interval(successes: int, n: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a rate (Wilson 1927); None without trials."""
    if n <= 0:
        return None
    p = successes / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(total: float, total_sq: float, n: int) -> tuple[float, float] | None:
    """The 95% normal-approximation interval of a mean from its sums; None below 2 values."""
    if n < 2:
        return None
    mean = total / n
    variance = max(0.0, (total_sq - n * mean * mean) / (n - 1))
    half = Z95 * math.sqrt(variance / n)
    return mean - half, mean + half


def estimate(value: float, interval: tuple[float, float] | None, n: int) -> dict[str, Any]:
    """A metric as the API reports it: value, 95% interval (null: too few samples), n."""
    low, high = interval if interval is not None else (None, None)
    return {"value": None if math.isnan(value) else value, "low": low, "high": high, "n": n}


def assign_variant(user: str, seed: int, names: Sequence[str], shares: Sequence[float]) -> str:
    """The variant of ``user``: a point in [0, 1) from a seeded hash of the id, then the
    variant whose slice of the cumulative shares holds it."""
    point = murmur3_32(user.encode("utf-8", "surrogatepass"), seed & 0xFFFFFFFF) / 2.0**32
    cumulative = 0.0
    for name, share in zip(names, shares, strict=True):
        cumulative += share
        if point < cumulative:
            return name
    return names[-1]  # rounding of the shares' sum


class Experiments:
    """The variants of ``[experiments]``: their models (None: the base model) and the online
    counts of each variant.  Saved with the base model's
    snapshot; each own model is saved whole, under its own settings."""

    STATE_VERSION: ClassVar[int] = 1

    def __init__(self, config: ExperimentsConfig, models: dict[str, Model | None]) -> None:
        self.seed = config.seed
        self.names = sorted(config.variants)
        self.shares = [config.variants[name].share for name in self.names]
        self.models = models
        self.online = {name: [0, 0] for name in self.names}  # impressions, clicks
        self._rankers: dict[str, Ranker] = {}

    def assign(self, user: str) -> str:
        return assign_variant(user, self.seed, self.names, self.shares)

    def own_models(self) -> list[Model]:
        return [m for m in self.models.values() if m is not None]

    def ranker(self, name: str, base: Ranker) -> Ranker:
        """The ranker of a variant (the base model's for a variant without changes)."""
        model = self.models[name]
        if model is None:
            return base
        if name not in self._rankers:
            self._rankers[name] = model.ranker()
        return self._rankers[name]

    # -- online outcomes -----------------------------------------------------------

    def observe(self, resolved: Sequence[Resolved]) -> None:
        """Impressions whose label is known: the click-through of the variant that showed
        them (the user's)."""
        for r in resolved:
            user = r.event.user
            if user is None or r.outcome == "late":  # a late click corrects, it is no view
                continue
            counts = self.online[self.assign(user)]
            counts[0] += 1
            counts[1] += int(r.label == POSITIVE)

    def forget_user(self, user: str) -> None:
        from actors.forget import forget_user  # forget.py builds on the model, as this does

        for model in self.own_models():
            forget_user(model, user)

    # -- saved state ---------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "variants": {
                name: compose(VARIANT_STATE, model.settings(), model.parts())
                for name, model in self.models.items()
                if model is not None
            },
            "online": {name: list(counts) for name, counts in self.online.items()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        saved = state["variants"]
        for name, model in self.models.items():
            if model is None:
                continue
            if name not in saved:
                raise StateError(f"the snapshot has no model of experiment variant {name!r}")
            try:
                restore(saved[name], VARIANT_STATE, model.settings(), model.parts())
            except StateError as error:
                raise StateError(f"experiment variant {name!r}: {error}") from None
        online = state.get("online", {})  # a new variant (or counter) starts at zero
        self.online = {name: [int(x) for x in online.get(name, (0, 0))] for name in self.names}
