"""Experiments between model variants: who gets which variant and the variants' own
models.  Pure, synchronous code (runtime/experiments.py wires it).

A user's variant is a seeded MurmurHash3 of the user id mapped onto the variants'
shares (in name order), so it is the same in every process and after every restart.
Every variant learns from every event; a variant that changes nothing of the base
config is served by the base model itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from actors.murmur import murmur3_32
from actors.state import StateError, compose, restore
from runtime.config import ExperimentsConfig

if TYPE_CHECKING:
    from actors.model import Model
    from actors.ranker import Ranker

VARIANT_STATE = "experiment variant"


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
    """The variants of ``[experiments]`` and their models (None: the base model).  Saved
    with the base model's snapshot; each own model is saved whole, under its own settings."""

    STATE_VERSION: ClassVar[int] = 1

    def __init__(self, config: ExperimentsConfig, models: dict[str, Model | None]) -> None:
        self.seed = config.seed
        self.names = sorted(config.variants)
        self.shares = [config.variants[name].share for name in self.names]
        self.models = models
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
