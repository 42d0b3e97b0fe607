"""Experiments between model variants: who gets which variant, the variants' own models,
the click-through each variant earns and team-draft interleaving credits, each with a
95% confidence interval.  Pure, synchronous code (runtime/experiments.py wires it).

A user's variant is a seeded MurmurHash3 of the user id mapped onto the variants'
shares (in name order), so it is the same in every process and after every restart.
Every variant learns from every event; a variant that changes nothing of the base
config is served by the base model itself.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
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
MAX_SHOWN = 100_000  # interleaved items remembered for their clicks, oldest forgotten first
MAX_LISTS = 20_000  # interleaved answers still open to clicks; older ones are scored
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


def team_draft(
    rankings: tuple[Sequence[str], Sequence[str]], k: int, rng: random.Random
) -> list[tuple[str, int]]:
    """Team-draft interleaving (Radlinski, Kurup & Joachims 2008): the team with fewer
    picks (a coin flip on a tie) adds its best item not yet shown; ``(item, team)``."""
    picked: list[tuple[str, int]] = []
    shown: set[str] = set()
    counts = [0, 0]
    cursors = [0, 0]
    while len(picked) < k:
        left = [_skip_shown(rankings[t], cursors[t], shown) for t in (0, 1)]
        cursors = left
        open_ = [t for t in (0, 1) if left[t] < len(rankings[t])]
        if not open_:
            break
        if len(open_) == 1:
            team = open_[0]
        elif counts[0] != counts[1]:
            team = 0 if counts[0] < counts[1] else 1
        else:
            team = int(rng.random() < 0.5)
        item = rankings[team][cursors[team]]
        picked.append((item, team))
        shown.add(item)
        counts[team] += 1
    return picked


def _skip_shown(ranking: Sequence[str], cursor: int, shown: set[str]) -> int:
    while cursor < len(ranking) and ranking[cursor] in shown:
        cursor += 1
    return cursor


def _outcome(clicks: list[int]) -> int:
    """0: team 0 got more clicks, 1: team 1 did, 2: a tie."""
    return 0 if clicks[0] > clicks[1] else 1 if clicks[1] > clicks[0] else 2


class Experiments:
    """The variants of ``[experiments]``: their models (None: the base model), the online
    counts of each variant and the interleaving credits.  Saved with the base model's
    snapshot; each own model is saved whole, under its own settings."""

    STATE_VERSION: ClassVar[int] = 1

    def __init__(self, config: ExperimentsConfig, models: dict[str, Model | None]) -> None:
        self.seed = config.seed
        self.interleaving = config.interleaving
        self.names = sorted(config.variants)
        self.shares = [config.variants[name].share for name in self.names]
        self.models = models
        self.online = {name: [0, 0] for name in self.names}  # impressions, clicks
        self.shown: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()
        self.lists: OrderedDict[int, list[int]] = OrderedDict()  # clicks per team
        self.outcomes = [0, 0, 0]  # lists won by team 0, by team 1, tied (scored lists)
        self.served = 0
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

    # -- interleaving ------------------------------------------------------------

    def interleave(
        self, user: str, rankings: tuple[Sequence[str], Sequence[str]], k: int
    ) -> list[tuple[str, int]]:
        """One interleaved answer for ``user``, remembered so its clicks credit its teams."""
        self.served += 1
        rng = random.Random(f"{self.seed}:{user}:{self.served}")
        picked = team_draft(rankings, k, rng)
        self.lists[self.served] = [0, 0]
        for item, team in picked:
            self.shown[(user, item)] = (self.served, team)
            self.shown.move_to_end((user, item))
        while len(self.shown) > MAX_SHOWN:
            self.shown.popitem(last=False)
        while len(self.lists) > MAX_LISTS:
            self._score(self.lists.popitem(last=False)[1])
        return picked

    def _score(self, clicks: list[int]) -> None:
        if clicks[0] or clicks[1]:
            self.outcomes[_outcome(clicks)] += 1

    def win_counts(self) -> list[int]:
        """Lists won by team 0, by team 1 and tied, counting the open lists as they stand."""
        outcomes = list(self.outcomes)
        for clicks in self.lists.values():
            if clicks[0] or clicks[1]:
                outcomes[_outcome(clicks)] += 1
        return outcomes

    # -- online outcomes -----------------------------------------------------------

    def observe(self, resolved: Sequence[Resolved]) -> None:
        """Impressions whose label is known: the click-through of the variant that showed
        them (the user's, or under interleaving the team that picked the item)."""
        for r in resolved:
            user = r.event.user
            if user is None or r.outcome == "late":  # a late click corrects, it is no view
                continue
            clicked = r.label == POSITIVE
            name = self.assign(user)
            if self.interleaving:
                shown = self.shown.get((user, r.event.item))
                if shown is None:
                    continue  # not from an interleaved answer this process remembers
                list_id, team = shown
                name = self.names[team]
                if clicked and list_id in self.lists:
                    self.lists[list_id][team] += 1
            counts = self.online[name]
            counts[0] += 1
            counts[1] += int(clicked)

    def forget_user(self, user: str) -> None:
        from actors.forget import forget_user  # forget.py builds on the model, as this does

        for model in self.own_models():
            forget_user(model, user)
        for key in [key for key in self.shown if key[0] == user]:
            del self.shown[key]

    # -- saved state ---------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "variants": {
                name: compose(VARIANT_STATE, model.settings(), model.parts())
                for name, model in self.models.items()
                if model is not None
            },
            "online": {name: list(counts) for name, counts in self.online.items()},
            "shown": [
                [u, i, list_id, team] for (u, i), (list_id, team) in list(self.shown.items())
            ],
            "lists": [[list_id, a, b] for list_id, (a, b) in list(self.lists.items())],
            "outcomes": list(self.outcomes),
            "served": self.served,
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
        shown = state.get("shown", [])
        self.shown = OrderedDict(((u, i), (int(l_), int(t))) for u, i, l_, t in shown)
        self.lists = OrderedDict((int(l_), [int(a), int(b)]) for l_, a, b in state.get("lists", []))
        self.outcomes = [int(x) for x in state.get("outcomes", (0, 0, 0))]
        self.served = int(state.get("served", 0))
