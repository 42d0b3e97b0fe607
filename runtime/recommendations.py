"""What a recommend call returns: the ranked items, and the experiment variant that ranked
them.  A list, so code written before experiments reads it as it did; ``variant`` is None
without an ``[experiments]`` section.  Imports nothing of freshrank (the client uses it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

INTERLEAVED = "interleaved"  # the variant of a team-draft answer (each item names its team)


class Recommendations(list[dict[str, Any]]):
    """The items, best first, each ``{"item", "score", ...}``; ``variant``: who ranked them."""

    def __init__(self, items: Iterable[dict[str, Any]] = (), variant: str | None = None) -> None:
        super().__init__(items)
        self.variant = variant
