"""Saved state (actors/state.py): parts compose into one checked file, and a damaged,
foreign or differently configured file is refused before any part changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from actors.model import build_model
from actors.state import StateError, compose, decode_state, encode_state, restore
from runtime import snapshots
from runtime.config import Config


class Counter:
    STATE_VERSION: ClassVar[int] = 3

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def to_state(self) -> dict[str, Any]:
        return {"value": self.value, "array": np.arange(self.value)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.value = int(state["value"])
        assert np.array_equal(state["array"], np.arange(self.value))


def test_parts_round_trip_through_the_file_format() -> None:
    document = compose("snapshot", {"bits": 4}, {"a": Counter(5), "b": Counter(2)})
    a, b = Counter(), Counter()
    restore(decode_state(encode_state(document)), "snapshot", {"bits": 4}, {"a": a, "b": b})
    assert (a.value, b.value) == (5, 2)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:10], "truncated"),
        (lambda data: b"XXXX" + data[4:], "not a freshrank state file"),
        (lambda data: data[:20] + bytes([data[20] ^ 0xFF]) + data[21:], "checksum"),
        (lambda data: data + b"\0", "padded"),
    ],
)
def test_a_damaged_file_is_refused_with_its_reason(damage: Any, reason: str) -> None:
    data = encode_state(compose("snapshot", {}, {"a": Counter(50)}))
    with pytest.raises(StateError, match=reason):
        decode_state(damage(data), "snap")


def test_other_kinds_settings_and_versions_are_refused_before_anything_loads() -> None:
    document = compose("snapshot", {"bits": 4}, {"a": Counter(5), "b": Counter(2)})
    a = Counter()
    with pytest.raises(StateError, match="not a freshrank shard checkpoint"):
        restore(document, "shard checkpoint", {"bits": 4}, {"a": a})
    with pytest.raises(StateError, match="differ"):
        restore(document, "snapshot", {"bits": 5}, {"a": a})
    newer = Counter()
    newer.STATE_VERSION = 4  # type: ignore[misc]
    with pytest.raises(StateError, match="part 'b': version 3, this process reads 4"):
        restore(document, "snapshot", {"bits": 4}, {"a": a, "b": newer})
    assert a.value == 0  # nothing was loaded


def test_every_model_part_restores_what_it_saved(tmp_path: Path) -> None:
    config = Config.from_dict({"model": {"bits": 12, "factor_bits": 10}})
    model = build_model(config)
    model.store.z[[3, 7]] = [0.5, -2.0]
    model.store.n[[3, 7]] = [1.0, 4.0]
    model.store.refresh()
    assert model.factors is not None
    model.factors.v[5] = 0.25
    model.factors.active[5] = True
    model.users.add("u", 0)
    model.stream.seq = 41
    path = snapshots.save(tmp_path / "s", "snapshot", model.settings(), model.parts())
    again = build_model(config)
    snapshots.load(path, "snapshot", again.settings(), again.parts())
    assert np.array_equal(again.store.w, model.store.w) and again.store.w[7] != 0
    assert np.array_equal(again.factors.v, model.factors.v)  # type: ignore[union-attr]
    assert list(again.users.history) == ["u"] and set(again.users.history["u"]) == {0}
    assert again.stream.seq == 41


def test_a_missing_file_is_a_state_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="No such file"):
        snapshots.read(tmp_path / "nothing")
