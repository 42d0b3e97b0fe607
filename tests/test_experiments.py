"""Experiments (runtime/experiments.py, actors/experiments.py): variants learning side by
side from the same events, deterministic assignment, the variant in every answer, saved
and replayed state, per-variant metrics with confidence intervals, and a better variant
winning on a simulator stream; through the embedded System, HTTP and the client."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors.experiments import assign_variant
from actors.model import Model
from actors.simulator import Simulator, SimulatorConfig
from actors.state import StateError
from runtime.client import ApiError, AsyncClient, Client, RetryPolicy
from runtime.config import Config, ConfigError
from runtime.errors import BadRequest
from runtime.recommendations import Recommendations
from runtime.system import System
from tests.conftest import served_system

FAST = RetryPolicy(attempts=2, base_s=0.001, max_s=0.01)
BASE = {"model": {"bits": 16}, "state": {"restore": False}, "ingest": {"dead_letter_path": ""}}
# a broken learning rate and no sequence signals, against the defaults
BROKEN = {"ftrl": {"alpha": 1e-6, "factor_alpha": 1e-6}, "sequence": {"enabled": False}}


def experiment(**variants: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, "experiments": {"seed": 7, "variants": variants}}


TWO_ARMS = experiment(
    control={"share": 0.5}, broken={"share": 0.5, **BROKEN, "training": {"negatives": 4}}
)


def stream(n: int, seed: int = 3) -> list[dict[str, Any]]:
    """A simulator's clicks (implicit feedback): users with tastes over genres."""
    config = SimulatorConfig(seed=seed, n_users=150, n_items=120, impressions_per_event=False)
    return Simulator(config).next_batch(n)


# -- the config --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ({"a": {"share": 0.5}}, "shares must sum to 1"),
        ({"a": {"share": 1.0, "http": {"port": 1}}}, "a variant changes only model"),
        ({"a": {"share": 1.0, "training": {"negativez": 1}}}, "variants.a: unknown key"),
        ({"a": {"share": 1.0, "training": {"negatives": -1}}}, "variants.a: training.negatives"),
        ({"a": {"share": 0}}, "a.share must be a number in (0, 1]"),
        ({"a b": {"share": 1.0}}, "names must be 1..64"),
    ],
)
def test_a_bad_experiments_section_is_refused_naming_the_variant(
    variants: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        Config.from_dict({"experiments": {"variants": variants}})
    assert message in str(refused.value)


def test_a_variant_table_reads_as_written_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "freshrank.toml"
    path.write_text(
        "[experiments]\nseed = 7\n\n[experiments.variants.control]\nshare = 0.5\n\n"
        "[experiments.variants.more_negatives]\nshare = 0.5\ntraining.negatives = 16\n\n"
        "[experiments.variants.more_negatives.ftrl]\nalpha = 0.2\n"
    )
    variants = Config.load(path).experiments.variants
    assert variants["control"].overrides == {}
    assert variants["more_negatives"].overrides == {
        "training": {"negatives": 16},
        "ftrl": {"alpha": 0.2},
    }


# -- assignment --------------------------------------------------------------------------

NAMES, SHARES = ["a", "b", "c"], [0.2, 0.3, 0.5]
PROGRAM = (
    "from actors.experiments import assign_variant as a\n"
    "print(''.join(a(f'user{i}', 7, ['a', 'b', 'c'], [0.2, 0.3, 0.5]) for i in range(2000)))"
)


def test_assignment_is_deterministic_follows_the_shares_and_the_seed() -> None:
    users = [f"user{i}" for i in range(20_000)]
    first = [assign_variant(u, 7, NAMES, SHARES) for u in users]
    assert first == [assign_variant(u, 7, NAMES, SHARES) for u in users]
    counts = Counter(first)
    for name, share in zip(NAMES, SHARES, strict=True):
        assert abs(counts[name] / len(users) - share) < 0.015
    reseeded = [assign_variant(u, 8, NAMES, SHARES) for u in users]
    assert 0.3 < np.mean([x != y for x, y in zip(first, reseeded, strict=True)]) < 0.8
    # another process (another hash seed for str) assigns the same
    other = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "123"}, cwd=Path(__file__).resolve().parents[1],
    ).stdout.strip()  # fmt: skip
    assert other == "".join(first[:2000])


# -- the embedded System -----------------------------------------------------------------


def own_model(system: System) -> Model:
    """The one variant with a model of its own (TWO_ARMS' "broken")."""
    assert system.model.experiments is not None
    (model,) = system.model.experiments.own_models()
    return model


async def test_variants_learn_side_by_side_and_serve_their_users() -> None:
    async with System.from_config(TWO_ARMS) as system:
        await system.ingest(stream(1500))
        broken, experiments = own_model(system), system.model.experiments
        assert experiments is not None
        assert experiments.models["control"] is None  # no changes: the base model serves it
        assert broken.stream.seq == system.model.stream.seq
        assert not np.array_equal(broken.store.w, system.model.store.w)
        for user in (f"u{i}" for i in range(20)):
            answer = await system.recommend(user, k=5)
            assert isinstance(answer, Recommendations)
            assert answer.variant == experiments.assign(user)
            forced = await system.recommend(user, k=5, variant="broken")
            assert forced.variant == "broken"
        with pytest.raises(BadRequest, match="unknown variant 'nope'"):
            await system.recommend("u1", variant="nope")
        assert set(system.statistics()["variant_trainers"]) == {"broken"}


async def test_without_experiments_answers_are_unchanged() -> None:
    async with System.from_config(BASE) as system:
        await system.ingest(stream(200))
        answer = await system.recommend("u1", k=3)
        assert type(answer) is list and "variant_trainers" not in system.statistics()
        with pytest.raises(BadRequest, match="needs an \\[experiments\\] section"):
            await system.recommend("u1", variant="control")


def durable(state: Path) -> dict[str, Any]:
    return {**TWO_ARMS, "state": {"dir": str(state)}}


def variant_weights(system: System) -> np.ndarray:
    return own_model(system).store.w.copy()


async def test_variants_survive_a_snapshot_and_a_journal_replay(tmp_path: Path) -> None:
    events = stream(1200)
    async with System.from_config(TWO_ARMS) as reference:
        await reference.ingest(events[:700])
        await reference.ingest(events[700:])
        expected = variant_weights(reference)
        expected_metrics = own_model(reference).metrics.summary()
    config = durable(tmp_path / "state")
    system = System.from_config(config)
    await system.start()
    await system.ingest(events[:700])
    await system.snapshot()
    await system.ingest(events[700:])  # journaled only: a crash before the next snapshot
    await system.stop(drain=False)
    async with System.from_config(config) as restarted:
        assert restarted.persistence.durability is not None
        assert restarted.persistence.durability.counters["replayed_records"] == 1
        np.testing.assert_allclose(variant_weights(restarted), expected, atol=1e-9)
        assert own_model(restarted).metrics.summary() == expected_metrics


async def test_a_snapshot_of_other_variants_is_refused_naming_the_variant(tmp_path: Path) -> None:
    path = tmp_path / "model.snapshot"
    async with System.from_config(TWO_ARMS) as system:
        await system.ingest(stream(200))
        await system.save_snapshot(path)
    changed = experiment(
        control={"share": 0.5}, broken={"share": 0.5, **BROKEN, "training": {"negatives": 4},
                                         "model": {"factors": 4}},
    )  # fmt: skip
    with pytest.raises(StateError, match="experiment variant 'broken': model settings differ"):
        System.from_config(changed).restore(path)


async def test_forgetting_a_user_forgets_them_in_every_variant() -> None:
    async with System.from_config(TWO_ARMS) as system:
        await system.ingest(stream(400))
        broken = own_model(system)
        user = next(iter(system.users.history))
        assert user in broken.users.history
        await system.lifecycle.forget_user(user)
        assert user not in broken.users.history and user not in system.users.history


# -- over HTTP and through the client ------------------------------------------------------


@pytest.fixture
async def served() -> AsyncIterator[tuple[System, str]]:
    async with served_system({**TWO_ARMS, "training": {"rank_eval_every": 2}}) as served:
        yield served


async def test_http_answers_name_the_variant(served: tuple[System, str]) -> None:
    system, url = served
    await system.ingest(stream(300))
    server_experiments = system.model.experiments
    assert server_experiments is not None
    async with AsyncClient(url, retry=FAST) as client:
        session = client._session
        assert session is not None
        async with session.post(
            f"{url}/v1/recommend", json={"user": "u3", "k": 2, "variant": "control"}
        ) as answer:
            assert (await answer.json())["variant"] == "control"
        async with session.post(f"{url}/v1/recommend", json={"user": "u3", "variant": 5}) as bad:
            assert bad.status == 400 and "'variant'" in (await bad.text())
        async with session.get(f"{url}/v1/recommend", params={"user": "u3"}) as answer:
            assert (await answer.json())["variant"] == server_experiments.assign("u3")
        ranked = await client.recommend("u1", k=4)
        assert ranked.variant == server_experiments.assign("u1")
        assert (await client.recommend("u1", k=4, variant="broken")).variant == "broken"
        with pytest.raises(ApiError) as refused:
            await client.recommend("u1", variant="nope")
        assert refused.value.status == 400 and "unknown variant" in refused.value.reason
    forced = await asyncio.to_thread(Client(url, retry=FAST).recommend, "u2", 3, variant="broken")
    assert forced.variant == "broken"
