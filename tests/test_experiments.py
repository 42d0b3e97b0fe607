"""Experiments (runtime/experiments.py, actors/experiments.py): variants learning side by
side from the same events, deterministic assignment, the variant in every answer, saved
and replayed state, per-variant metrics with confidence intervals, and a better variant
winning on a simulator stream; through the embedded System, HTTP and the client."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from actors import experiments as experiments_module
from actors.delayed import Resolved
from actors.events import Event
from actors.experiments import (
    Experiments,
    assign_variant,
    mean_interval,
    team_draft,
    wilson_interval,
)
from actors.model import Model
from actors.simulator import Simulator, SimulatorConfig
from actors.state import StateError
from runtime import cli
from runtime.client import ApiError, AsyncClient, Client, RetryPolicy
from runtime.cluster import ClusterFront
from runtime.config import Config, ConfigError, ExperimentsConfig, Variant
from runtime.errors import BadRequest
from runtime.http import make_app
from runtime.messages import POSITIVE
from runtime.recommendations import Recommendations
from runtime.system import System
from tests.conftest import served_system
from tests.test_daemon import daemon, stop

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
        ({"a": {"share": 1.0, "training": {"rank_k": 5}}}, "training.rank_k is the base's"),
        ({"a b": {"share": 1.0}}, "names must be 1..64"),
    ],
)
def test_a_bad_experiments_section_is_refused_naming_the_variant(
    variants: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        Config.from_dict({"experiments": {"variants": variants}})
    assert message in str(refused.value)


def test_interleaving_needs_exactly_two_variants() -> None:
    three = {name: {"share": 1 / 3} for name in "abc"}
    with pytest.raises(ConfigError, match="needs exactly two variants"):
        Config.from_dict({"experiments": {"interleaving": True, "variants": three}})


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


def test_confidence_intervals() -> None:
    low, high = wilson_interval(50, 100) or (0.0, 0.0)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 0) is None
    assert (wilson_interval(0, 10) or (1.0, 0.0))[0] == 0.0
    values = np.array([0.0, 1.0, 0.5, 0.25])
    low, high = mean_interval(values.sum(), (values**2).sum(), 4) or (0.0, 0.0)
    half = 1.959963984540054 * values.std(ddof=1) / 2
    assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half))


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
        expected_report = reference.statistics()["experiments"]
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
        assert restarted.statistics()["experiments"] == expected_report


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


async def test_impressions_and_clicks_make_each_variants_click_through() -> None:
    config = {**TWO_ARMS, "labels": {"window_s": 60.0}}
    async with System.from_config(config) as system:
        experiments = system.model.experiments
        assert experiments is not None
        await system.ingest(stream(300))
        users = [f"u{i}" for i in range(40)]
        shown = [
            {"event": "impression", "impression_id": f"{u}-{n}", "user": u, "item": f"i{n}",
             "ts": 1_700_100_000.0}
            for u in users for n in range(3)
        ]  # fmt: skip
        clicks = [
            {"event": "click", "impression_id": f"{u}-0", "ts": 1_700_100_001.0}
            for u in users
            if experiments.assign(u) == "control"
        ]
        assert (await system.ingest(shown + clicks)).rejected == 0
        await system.flush_labels(1_700_100_100.0)
        await system.drain()
        ctr = {n: v["ctr"] for n, v in system.statistics()["experiments"]["variants"].items()}
    in_control = sum(experiments.assign(u) == "control" for u in users)
    assert ctr["control"]["n"] == 3 * in_control
    assert ctr["control"]["value"] == pytest.approx(1 / 3)
    assert ctr["broken"]["n"] == 3 * (len(users) - in_control) and ctr["broken"]["value"] == 0
    assert ctr["broken"]["high"] < ctr["control"]["low"]


# -- acceptance: the better variant wins, over HTTP and through the client -----------------


@pytest.fixture
async def served() -> AsyncIterator[tuple[System, str]]:
    async with served_system(
        {**TWO_ARMS, "training": {"rank_eval_every": 2, "rank_eval_rows": 0}}
    ) as served:
        yield served


async def test_the_better_variant_wins_on_a_simulator_stream(
    served: tuple[System, str],
) -> None:
    system, url = served
    async with AsyncClient(url, retry=FAST) as client:
        events = stream(4000)
        for lo in range(0, len(events), 1000):
            await client.ingest(events[lo : lo + 1000])
        report = await client.experiments()
        assert report == system.statistics()["experiments"]
        control, broken = report["variants"]["control"], report["variants"]["broken"]
        for metric in ("hr@10", "ndcg@10"):
            assert control[metric]["n"] == broken[metric]["n"] > 1000
            assert control[metric]["low"] > broken[metric]["high"], (metric, control, broken)
        answer = await client.recommend("u1", k=4)
        assert answer.variant == system.model.experiments.assign("u1")  # type: ignore[union-attr]
        assert (await client.recommend("u1", k=4, variant="broken")).variant == "broken"
        with pytest.raises(ApiError) as refused:
            await client.recommend("u1", variant="nope")
        assert refused.value.status == 400 and "unknown variant" in refused.value.reason

    def sync_calls() -> tuple[Any, ...]:
        client = Client(url, retry=FAST)
        return client.recommend("u2", k=3), client.experiments()

    answer, report = await asyncio.to_thread(sync_calls)
    assert answer.variant in ("control", "broken") and set(report["variants"]) == {
        "control",
        "broken",
    }


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
        async with session.get(f"{url}/metrics") as answer:
            text = await answer.text()
        assert 'freshrank_experiment_metric{bound="low",metric="hr@10",variant="broken"}' in text
    forced = await asyncio.to_thread(Client(url, retry=FAST).recommend, "u2", 3, variant="broken")
    assert forced.variant == "broken"


async def test_without_experiments_the_report_is_a_404() -> None:
    async with served_system(BASE) as (_, url), AsyncClient(url, retry=FAST) as client:
        with pytest.raises(ApiError) as missing:
            await client.experiments()
        answer = await client.recommend("u1", k=2)
    assert missing.value.status == 404 and "[experiments]" in missing.value.reason
    assert answer.variant is None


# -- team-draft interleaving ---------------------------------------------------------------


def test_team_draft_alternates_fairly_and_keeps_each_teams_order() -> None:
    first = [f"i{n}" for n in range(10)]
    second = [f"i{n}" for n in (3, 1, 11, 0, 12, 13, 14, 15, 16, 17)]
    for seed in range(50):
        picked = team_draft((first, second), 8, random.Random(seed))
        items = [item for item, _ in picked]
        assert len(items) == len(set(items)) == 8
        teams = [team for _, team in picked]
        for n in range(1, 9):  # after every pick the teams differ by at most one
            assert abs(teams[:n].count(0) - teams[:n].count(1)) <= 1
        for team, ranking in ((0, first), (1, second)):
            mine = [item for item, t in picked if t == team]
            assert mine == sorted(mine, key=ranking.index)
    assert team_draft((["a"], []), 3, random.Random(0)) == [("a", 0)]


INTERLEAVED = {**TWO_ARMS, "labels": {"window_s": 60.0}}
INTERLEAVED["experiments"] = {**TWO_ARMS["experiments"], "interleaving": True}


async def test_interleaved_answers_credit_clicks_to_their_teams() -> None:
    async with System.from_config(INTERLEAVED) as system:
        await system.ingest(stream(600))
        shown, clicks = [], []
        for n in range(30):
            user = f"u{n}"
            answer = await system.recommend(user, k=6)
            assert isinstance(answer, Recommendations) and answer.variant == "interleaved"
            assert {entry["team"] for entry in answer} <= {"control", "broken"}
            for rank, entry in enumerate(answer):
                key = f"{user}-{rank}"
                shown.append({"event": "impression", "impression_id": key, "user": user,
                              "item": entry["item"], "ts": 1_700_100_000.0})  # fmt: skip
                if entry["team"] == "control":  # users click only what control picked
                    clicks.append({"event": "click", "impression_id": key, "ts": 1_700_100_001.0})
        assert (await system.ingest(shown + clicks)).rejected == 0
        await system.flush_labels(1_700_100_100.0)
        report = system.statistics()["experiments"]
        forced = await system.recommend("u1", k=3, variant="broken")
    assert forced.variant == "broken" and all("team" not in entry for entry in forced)
    interleaving = report["interleaving"]
    assert interleaving["lists_served"] == 30
    assert interleaving["wins"]["broken"] == 0 and interleaving["ties"] == 0
    win_rate = interleaving["win_rate"]
    assert win_rate["variant"] == "broken"  # the first by name
    assert win_rate["n"] == interleaving["wins"]["control"] > 20
    assert win_rate["value"] == 0.0 and win_rate["high"] < 0.5  # control wins beyond noise
    assert report["variants"]["broken"]["ctr"]["value"] == 0.0
    assert report["variants"]["control"]["ctr"]["value"] == 1.0


async def test_interleaved_answers_are_remembered_across_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "model.snapshot"
    async with System.from_config(INTERLEAVED) as system:
        await system.ingest(stream(300))
        answer = await system.recommend("u5", k=4)
        await system.save_snapshot(path)
    restarted = System.from_config(INTERLEAVED)
    restarted.restore(path)
    async with restarted:
        shown = {"event": "impression", "impression_id": "x", "user": "u5",
                 "item": answer[0]["item"], "ts": 1_700_100_000.0}  # fmt: skip
        click = {"event": "click", "impression_id": "x", "ts": 1_700_100_001.0}
        await restarted.ingest([shown, click])
        interleaving = restarted.statistics()["experiments"]["interleaving"]
    assert interleaving["lists_served"] == 1
    assert interleaving["wins"][answer[0]["team"]] == 1 and interleaving["ties"] == 0


# -- the README's example and cluster mode ---------------------------------------------------


def test_the_readme_experiment_config_loads_as_written(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("    cat > experiment.toml <<'EOF'\n") + len(
        "    cat > experiment.toml <<'EOF'\n"
    )
    body = readme[start : readme.index("    EOF\n", start)]
    path = tmp_path / "experiment.toml"
    path.write_text("".join(line.removeprefix("    ") for line in body.splitlines(True)))
    config = Config.load(path)
    assert config.experiments.seed == 7
    variants = config.experiments.variants
    assert variants["control"].overrides == {}
    assert variants["more_negatives"].overrides == {
        "training": {"negatives": 16},
        "sequence": {"enabled": False},
    }


def test_cluster_roles_refuse_an_experiments_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text("[experiments.variants.only]\nshare = 1.0\n")
    for role in ("shard", "trainer", "ranker"):
        assert cli.main([role, "--id", "0", "--config", str(path)]) == 2
        assert "runs in one process only" in capsys.readouterr().err


async def test_a_cluster_ranker_answers_variant_with_501() -> None:
    app = make_app(ClusterFront(Config.from_dict({"model": {"bits": 12}}), 0))  # not started
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        answer = await client.get("/v1/recommend", params={"user": "u1", "variant": "a"})
        assert answer.status == 501
        assert "not built in cluster mode" in (await answer.json())["error"]


# -- the daemon ------------------------------------------------------------------------------

DAEMON_CONFIG = """\
[model]
bits = 16

[experiments]
seed = 7

[experiments.variants.control]
share = 0.5

[experiments.variants.broken]
share = 0.5
ftrl.alpha = 1e-6
sequence.enabled = false
"""


async def test_the_daemon_runs_variants_and_restores_them(tmp_path: Path) -> None:
    config = tmp_path / "experiment.toml"
    config.write_text(DAEMON_CONFIG)
    state = tmp_path / "state"
    users = [f"u{n}" for n in range(8)]
    async with (
        daemon(state, "--config", str(config)) as (proc, url),
        aiohttp.ClientSession() as http,
    ):
        async with http.post(f"{url}/v1/events", json=stream(800)) as answer:
            assert answer.status == 200
        async with http.get(f"{url}/v1/experiments") as answer:
            before = await answer.json()
        served = {user: await served_variant(http, url, user) for user in users}
        code, output = await stop(proc)
    assert code == 0, output
    assert set(before["variants"]) == {"control", "broken"}
    assert before["variants"]["broken"]["model"] == "own"
    async with (
        daemon(state, "--config", str(config)) as (proc, url),
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{url}/v1/experiments") as answer:
            assert await answer.json() == before
        assert {user: await served_variant(http, url, user) for user in users} == served
        code, output = await stop(proc)
    assert code == 0, output


async def served_variant(http: aiohttp.ClientSession, url: str, user: str) -> tuple[str, list[str]]:
    async with http.get(f"{url}/v1/recommend", params={"user": user, "k": "5"}) as answer:
        body = await answer.json()
    return body["variant"], [entry["item"] for entry in body["items"]]


def test_interleaving_credits_survive_eviction_and_a_state_round_trip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = ExperimentsConfig(
        seed=1, interleaving=True, variants={"a": Variant(0.5, {}), "b": Variant(0.5, {})}
    )
    experiments = Experiments(config, {"a": None, "b": None})
    monkeypatch.setattr(experiments_module, "MAX_LISTS", 2)
    (item, team), _ = experiments.interleave("u", (["x", "y"], ["y", "z"]), 2)
    clicked = Resolved(Event("u", item), label=POSITIVE, prescore=0.5, outcome="joined")
    experiments.observe([clicked])
    assert experiments.win_counts()[team] == 1 and experiments.outcomes == [0, 0, 0]
    experiments.interleave("v", (["x"], ["z"]), 2)
    experiments.interleave("w", (["x"], ["z"]), 2)  # the first answer is scored and let go
    assert list(experiments.lists) == [2, 3] and experiments.outcomes[team] == 1
    assert experiments.win_counts()[team] == 1
    assert experiments.online[experiments.names[team]] == [1, 1]
    restored = Experiments(config, {"a": None, "b": None})
    restored.load_state(experiments.to_state())
    assert restored.to_state() == experiments.to_state()
