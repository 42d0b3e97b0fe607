"""A cluster trainer's histories and item statistics, checkpointed (runtime/trainer_checkpoint.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actors.model import Model, build_model
from runtime.codec import encode
from runtime.config import Config
from runtime.trainer_checkpoint import TrainerCheckpoint


def config_in(folder: Path, bits: int = 14) -> Config:
    return Config.from_dict({"model": {"bits": bits, "factors": 0},
                             "cluster": {"checkpoint_dir": str(folder), "checkpoint_every": 2}})  # fmt: skip


def learned_model(config: Config) -> tuple[Model, TrainerCheckpoint]:
    model = build_model(config)
    assert model.sequence is not None
    for t, (user, row) in enumerate([("u1", 0), ("u1", 1), ("u2", 1), ("u2", 2)]):
        model.users.add(user, row, ts=100.0 + t)
    model.sequence.learn_event(np.array([0], np.int64), 1, 10.0)
    return model, TrainerCheckpoint(config, model)


def test_a_trainer_checkpoint_is_written_every_n_records_and_restores_what_it_covers(
    tmp_path: Path,
) -> None:
    config = config_in(tmp_path)
    model, checkpoint = learned_model(config)
    checkpoint.in_record = True
    checkpoint.committed((0, 6))
    assert checkpoint.written == 0  # the first of two records
    checkpoint.in_record = True
    checkpoint.committed((1, 3))
    assert checkpoint.written == 1 and checkpoint.path.exists()

    again = build_model(config)
    restored = TrainerCheckpoint(config, again)
    assert restored.restore()
    assert restored.covered.next == {0: 7, 1: 4}
    assert encode(again.users.to_state()) == encode(model.users.to_state())
    assert again.sequence is not None and model.sequence is not None
    assert encode(again.sequence.to_state()) == encode(model.sequence.to_state())
    fresh = build_model(config).sequence
    assert fresh is not None and encode(fresh.to_state()) != encode(model.sequence.to_state())


def test_no_checkpoint_is_written_inside_a_record(tmp_path: Path) -> None:
    _, checkpoint = learned_model(config_in(tmp_path))
    checkpoint.in_record = True  # a stop while the record's batch was being walked
    checkpoint.write()
    assert not checkpoint.path.exists() and checkpoint.written == 0


def test_another_configs_checkpoint_is_refused_and_the_histories_are_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, checkpoint = learned_model(config_in(tmp_path))
    checkpoint.write()
    other = config_in(tmp_path, bits=15)
    refused = TrainerCheckpoint(other, build_model(other))
    assert not refused.restore()
    assert refused.covered.next == {}
    assert "model settings differ" in caplog.text
