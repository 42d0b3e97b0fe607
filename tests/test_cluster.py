"""Cluster mode end to end: separate OS processes over a real Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors.readers import read_ctr_tsv, read_movielens
from runtime import snapshots
from runtime.cluster import Publisher, publish_log
from runtime.config import Config
from runtime.kafka import (
    KafkaTransport,
    committed_offsets,
    shards_answered,
    wait_until_consumed,
)
from runtime.replay import replay
from runtime.system import System
from runtime.trainer_checkpoint import trainer_checkpoint_path
from tests.conftest import Broker

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 120.0
LEARN_TIMEOUT = 300.0


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def cluster_config(tmp: Path, broker: Broker, prefix: str, **overrides: dict[str, Any]) -> Path:
    sections: dict[str, dict[str, Any]] = {
        "model": {"bits": 20},
        "training": {"shards": 4, "sync": True, "batch_size": 256},
        "kafka": {"bootstrap_servers": broker.bootstrap, "topic_prefix": prefix, "events_partitions": 1,
                  "connect_timeout": 30.0},
        "cluster": {"checkpoint_dir": str(tmp / "state"), "checkpoint_every": 10},
        "state": {"restore": False},
        "ingest": {"dead_letter_path": ""},
    }  # fmt: skip
    for name, values in overrides.items():
        sections.setdefault(name, {}).update(values)
    return write_config(tmp / "cluster.toml", sections)


@pytest.fixture
def ml_subset(tmp_path: Path, ml100k: Path) -> Path:
    """The first 12,000 ML-100K ratings in time order, next to the real u.item / u.user."""
    folder = tmp_path / "ml"
    folder.mkdir()
    rows = np.loadtxt(ml100k / "u.data", dtype=np.int64, delimiter="\t")
    rows = rows[np.argsort(rows[:, 3], kind="stable")][:12_000]
    np.savetxt(folder / "u.data", rows, fmt="%d", delimiter="\t")
    for name in ("u.item", "u.user"):
        (folder / name).symlink_to(ml100k / name)
    return folder


class Proc:
    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name, self.process, self.log = name, process, log
        self.pid = process.pid
        self.ready_line = ""

    async def wait_ready(self) -> None:
        assert self.process.stdout is not None
        while True:
            line = (await asyncio.wait_for(self.process.stdout.readline(), READY_TIMEOUT)).decode()
            if not line:
                raise AssertionError(
                    f"{self.name} exited before ready:\n{self.log.read_text()[-3000:]}"
                )
            if " ready" in line:
                self.ready_line = line
                return

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), READY_TIMEOUT)


@asynccontextmanager
async def processes(config: Path, *roles: tuple[str, int]) -> AsyncIterator[dict[str, Proc]]:
    procs: dict[str, Proc] = {}
    try:
        for role, index in roles:
            name = f"{role}-{index}"
            log = config.parent / f"{name}.log"
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtime", role, "--id", str(index), "--config", str(config),
                cwd=config.parent, stdout=asyncio.subprocess.PIPE, stderr=log.open("w"),
            )  # fmt: skip
            procs[name] = Proc(name, process, log)
        for proc in procs.values():
            await proc.wait_ready()
        yield procs
    finally:
        for proc in procs.values():
            if proc.process.returncode is None:
                proc.process.kill()
                await proc.process.wait()


def flat_checkpoint(path: Path) -> dict[str, Any]:
    """A shard checkpoint's weights and learner offsets as one dict."""
    parts = snapshots.read(path)["parts"]
    return {**parts["weights"]["state"], **parts["learner"]["state"]}


def model_from_checkpoints(config: Config) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    shards = config.training.shards
    z = np.zeros(1 << config.model.bits)
    n = np.zeros(1 << config.model.bits)
    counts = {"updates": 0, "batches": 0}
    for k in range(shards):
        path = Path(config.cluster.checkpoint_dir) / f"shard-{k}.msgpack"
        state = flat_checkpoint(path)
        index = np.asarray(state["index"], np.int64) * shards + k
        z[index] = state["z"]
        n[index] = state["n"]
        counts["updates"] += state["updates"]
        counts["batches"] += state["batches"]
    return z, n, counts


async def embedded_reference(config: Config, data: Path) -> System:
    system = System(config)
    async with system:
        await replay(system, read_movielens(data, config.training.batch_size))
    return system


async def test_cluster_in_sync_mode_equals_the_embedded_single_shard_run(
    tmp_path: Path, broker: Broker, topic_prefix: str, ml_subset: Path
) -> None:
    import aiohttp

    path = cluster_config(tmp_path, broker, topic_prefix, http={"port": 0})
    config = Config.load(path)
    roles = [("shard", k) for k in range(4)] + [("trainer", 0), ("ranker", 0)]
    users = ["1", "13", "92", "234", "405", "655"]
    n_users = len(set(np.loadtxt(ml_subset / "u.data", dtype=np.int64)[:, 0]))
    served: dict[str, list[dict[str, Any]]] = {}
    async with processes(path, *roles) as procs:
        published = await publish_log(config, read_movielens(ml_subset, config.training.batch_size))
        assert published["published"] == 12_000
        await asyncio.wait_for(
            wait_until_consumed(config, f"{topic_prefix}-trainers", "events", 1), LEARN_TIMEOUT
        )
        url = procs["ranker-0"].ready_line.split()[3]
        async with aiohttp.ClientSession() as http:
            for _ in range(1200):  # the ranker's replicas follow the topics (another process)
                async with http.get(f"{url}/v1/stats") as resp:
                    stats = await resp.json()
                followed = stats["followed_events"] >= published["published"]
                caught_up = stats["weight_deltas"] >= 4 * published["records"] and followed
                if caught_up and stats["users"] >= n_users:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"the ranker did not catch up: {stats}")
            for user in users:
                async with http.get(
                    f"{url}/v1/recommend", params={"user": user, "k": "10"}
                ) as resp:
                    served[user] = (await resp.json())["items"]
        codes = [await proc.stop() for proc in procs.values()]
    assert codes == [0] * 6, [p.log.read_text()[-2000:] for p in procs.values()]

    one_shard = Config.load(path)
    one_shard.training.shards = 1
    async with System(one_shard) as embedded:
        await replay(embedded, read_movielens(ml_subset, one_shard.training.batch_size))
        expected = {user: await embedded.recommend(user, k=10) for user in users}
    for user in users:  # the same predictions, served by another process
        assert [it["item"] for it in served[user]] == [it["item"] for it in expected[user]]
        np.testing.assert_allclose(
            [it["score"] for it in served[user]], [it["score"] for it in expected[user]], atol=1e-6
        )

    z, n, counts = model_from_checkpoints(config)
    reference = embedded
    assert np.count_nonzero(n) > 10_000
    np.testing.assert_allclose(z, reference.store.z, rtol=0, atol=1e-6)
    np.testing.assert_allclose(n, reference.store.n, rtol=0, atol=1e-6)
    assert counts["updates"] == reference.learners[0].updates

    trainer = json.loads((tmp_path / "state" / "trainer-0.json").read_text())
    ours = trainer["trainer"]["metrics"]
    theirs = reference.metrics.summary()
    assert ours["rank_evaluated"] == theirs["rank_evaluated"] > 0
    assert ours["hr@10"] == pytest.approx(theirs["hr@10"], abs=1e-12)
    assert trainer["trainer"]["events"] == 12_000
    assert trainer["trainer"]["freshness"]["count"] > 0


async def test_kill_9_of_a_shard_mid_replay_loses_and_doubles_nothing(
    tmp_path: Path, broker: Broker, topic_prefix: str, ml_subset: Path
) -> None:
    path = cluster_config(tmp_path, broker, topic_prefix, cluster={"trainers": 1, "rankers": 0})
    config = Config.load(path)
    launcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runtime", "launch", str(path),
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=(tmp_path / "launch.log").open("w"),
    )  # fmt: skip
    try:
        pids = await _ready_pids(launcher, expected=5)
        publishing = asyncio.ensure_future(
            publish_log(config, read_movielens(ml_subset, config.training.batch_size))
        )
        # kill shard 2 once it has checkpointed at least once, i.e. mid-replay
        checkpoint = tmp_path / "state" / "shard-2.msgpack"
        await asyncio.wait_for(_until(checkpoint.exists), LEARN_TIMEOUT)
        os.kill(pids["shard-2"], signal.SIGKILL)
        restarted = await _ready_pids(launcher, expected=1)
        assert restarted["shard-2"] != pids["shard-2"]
        await publishing
        await asyncio.wait_for(
            wait_until_consumed(config, f"{topic_prefix}-trainers", "events", 1), LEARN_TIMEOUT
        )
        launcher.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(launcher.wait(), READY_TIMEOUT) == 0
    finally:
        if launcher.returncode is None:
            launcher.kill()
            await launcher.wait()
    log = (tmp_path / "launch.log").read_text()
    assert "shard 2: restored" in log and "signal SIGKILL" in log, log[-3000:]
    # a shard killed at the stop keeps its last periodic checkpoint, not the final one
    assert "did not stop within" not in log, log[-3000:]
    z, n, counts = model_from_checkpoints(config)
    one_shard = Config.load(path)
    one_shard.training.shards = 1
    reference = await embedded_reference(one_shard, ml_subset)
    np.testing.assert_allclose(z, reference.store.z, rtol=0, atol=1e-9)
    np.testing.assert_allclose(n, reference.store.n, rtol=0, atol=1e-9)
    assert counts["updates"] == reference.learners[0].updates


async def _ready_pids(process: asyncio.subprocess.Process, expected: int) -> dict[str, int]:
    """Read the launcher's relayed output until ``expected`` children said they are ready."""
    assert process.stdout is not None
    pids: dict[str, int] = {}
    while len(pids) < expected:
        line = (await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)).decode()
        assert line, "the launcher exited"
        if " ready pid=" in line:
            name = line.split(" | ", 1)[0].strip()
            pids[name] = int(line.rsplit("pid=", 1)[1])
    return pids


async def _until(predicate: Any) -> None:
    while not predicate():  # noqa: ASYNC110 - a file written by another process
        await asyncio.sleep(0.05)


async def all_learned(config: Config) -> None:
    """Trainers committed every events record and shards applied every gradient batch;
    past LEARN_TIMEOUT, an AssertionError with the tail of every process's log."""
    prefix = config.kafka.topic_prefix
    try:
        await asyncio.wait_for(
            wait_until_consumed(
                config, f"{prefix}-trainers", "events", config.kafka.events_partitions
            ),
            LEARN_TIMEOUT,
        )
        await asyncio.wait_for(shards_answered(config), LEARN_TIMEOUT)
    except TimeoutError:
        folder = Path(config.cluster.checkpoint_dir).parent
        tails = {log.name: log.read_text()[-4000:] for log in sorted(folder.glob("*.log"))}
        progress = await asyncio.wait_for(topic_progress(config), 30)
        raise AssertionError(
            f"not everything was learned in {LEARN_TIMEOUT} s; {progress}; logs: {tails}"
        ) from None


async def topic_progress(config: Config) -> str:
    """Where each topic ends and what the trainers' group committed, to tell which stage
    of the cluster stopped moving."""
    prefix, shards = config.kafka.topic_prefix, config.training.shards
    events = await committed_offsets(
        config, f"{prefix}-trainers", f"{prefix}.events", config.kafka.events_partitions
    )
    grads = await committed_offsets(config, f"{prefix}-none", f"{prefix}.grads", shards)
    weights = await committed_offsets(config, f"{prefix}-none", f"{prefix}.weights", shards)
    items = await committed_offsets(
        config, f"{prefix}-none", f"{prefix}.items", config.kafka.items_partitions
    )

    def ends(offsets: dict[int, tuple[int, int]]) -> list[int]:
        return [end for _, end in offsets.values()]

    return (
        f"events (committed, end) per partition {events}, grads ends {ends(grads)}, "
        f"weights ends {ends(weights)}, items ends {ends(items)}"
    )


def shard_states(config: Config) -> list[dict[str, Any]]:
    out = []
    for k in range(config.training.shards):
        path = Path(config.cluster.checkpoint_dir) / f"shard-{k}.msgpack"
        out.append(flat_checkpoint(path))
    return out


@pytest.mark.parametrize("checkpoint", ["kept", "deleted"])
async def test_a_restarted_trainer_learns_on_as_if_it_had_never_stopped(
    tmp_path: Path, broker: Broker, topic_prefix: str, ml_subset: Path, checkpoint: str
) -> None:
    """The user histories and sequence statistics live only in the trainers: a trainer
    stopped after half the log and started anew loads them from the checkpoint the
    stopped one wrote, or without it rebuilds them from the committed events, so the
    rankers serve what the embedded run serves."""
    path = cluster_config(tmp_path, broker, topic_prefix, training={"shards": 2}, http={"port": 0})
    config = Config.load(path)
    chunks = list(read_movielens(ml_subset, config.training.batch_size))
    half = len(chunks) // 2
    users = ["1", "13", "92", "234"]
    async with processes(path, ("shard", 0), ("shard", 1), ("trainer", 0), ("ranker", 0)) as procs:
        first = await publish_log(config, iter(chunks[:half]))
        await all_learned(config)
        assert await procs["trainer-0"].stop() == 0
        if checkpoint == "deleted":
            trainer_checkpoint_path(config).unlink()
        async with processes(path, ("trainer", 1)) as again:
            sent = sum(1 for c in chunks[:half] if c.batch is not None and len(c.batch))
            publisher = Publisher(KafkaTransport(config), config, seq_start=sent)  # seqs go on
            await publisher.transport.start()
            try:
                for chunk in chunks[half:]:
                    if chunk.batch is not None and len(chunk.batch):
                        await publisher.publish(chunk.batch)
            finally:
                await publisher.transport.stop()
            await all_learned(config)
            url = procs["ranker-0"].ready_line.split()[3]
            served = await caught_up_answers(url, users, 12_000)
            assert await again["trainer-1"].stop() == 0
        log = (tmp_path / "trainer-1.log").read_text()
        if checkpoint == "kept":
            assert "restored from" in log and "rebuilt from" not in log, log[-2000:]
        else:
            assert f"rebuilt from {first['published']} events" in log, log[-2000:]
    one_shard = Config.load(path)
    one_shard.training.shards = 1
    async with System(one_shard) as embedded:
        await replay(embedded, iter(chunks))
        expected = {user: await embedded.recommend(user, k=10) for user in users}
    for user in users:
        assert [it["item"] for it in served[user]] == [it["item"] for it in expected[user]]
        np.testing.assert_allclose(
            [it["score"] for it in served[user]], [it["score"] for it in expected[user]], atol=1e-6
        )


async def caught_up_answers(url: str, users: list[str], events: int) -> dict[str, Any]:
    """Each user's top 10 from the ranker at ``url`` once it has followed ``events``."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        for _ in range(1200):  # the ranker's replicas follow the topics (another process)
            async with http.get(f"{url}/v1/stats") as resp:
                stats = await resp.json()
            if stats["followed_events"] >= events:
                break
            await asyncio.sleep(0.05)
        answers = {}
        for user in users:
            async with http.get(f"{url}/v1/recommend", params={"user": user, "k": "10"}) as resp:
                answers[user] = (await resp.json())["items"]
    return answers


async def test_two_trainers_split_the_partitions_and_every_event_is_learned_once(
    tmp_path: Path, broker: Broker, topic_prefix: str, ml_subset: Path
) -> None:
    path = cluster_config(
        tmp_path, broker, topic_prefix,
        training={"shards": 2, "sync": False}, kafka={"events_partitions": 2},
    )  # fmt: skip
    config = Config.load(path)
    roles = [("shard", 0), ("shard", 1), ("trainer", 0), ("trainer", 1)]
    async with processes(path, *roles) as procs:
        published = await publish_log(config, read_movielens(ml_subset, config.training.batch_size))
        await all_learned(config)
        codes = [await proc.stop() for proc in procs.values()]
    assert codes == [0] * 4
    trainers = [json.loads((tmp_path / "state" / f"trainer-{i}.json").read_text()) for i in (0, 1)]
    records = [t["events_records"] for t in trainers]
    assert all(r > 0 for r in records), records  # both trainers got partitions
    # at-least-once to trainers (a rebalance may redeliver), exactly once in the model
    assert sum(records) >= published["records"]
    for state in shard_states(config):
        assert state["batches"] == published["records"]
        assert state["duplicates"] == sum(records) - published["records"]


async def test_kill_9_of_a_trainer_loses_no_event(
    tmp_path: Path, broker: Broker, topic_prefix: str, ml_subset: Path
) -> None:
    path = cluster_config(
        tmp_path, broker, topic_prefix,
        training={"shards": 2, "sync": True}, kafka={"events_partitions": 2},
    )  # fmt: skip
    config = Config.load(path)
    roles = [("shard", 0), ("shard", 1), ("trainer", 0), ("trainer", 1)]
    async with processes(path, *roles) as procs:
        publishing = asyncio.ensure_future(
            publish_log(config, read_movielens(ml_subset, config.training.batch_size))
        )
        # kill trainer 1 once the shards have learned something, i.e. mid-replay
        await asyncio.wait_for(
            _until(lambda: (tmp_path / "state" / "shard-0.msgpack").exists()), LEARN_TIMEOUT
        )
        os.kill(procs["trainer-1"].pid, signal.SIGKILL)
        published = await publishing
        await all_learned(config)
        for name in ("shard-0", "shard-1", "trainer-0"):
            assert await procs[name].stop() == 0
    for state in shard_states(config):
        # every events record reached every shard exactly once in effect
        assert state["batches"] == published["records"], state["batches"]
        assert set(state["applied_upto"]) == {"0", "1"}


async def test_asynchronous_mode_is_within_one_percent_of_synchronous(
    tmp_path: Path, broker: Broker, topic_prefix: str, criteo_train: Path
) -> None:
    from actors.readers import read_ctr_tsv

    path = cluster_config(
        tmp_path, broker, topic_prefix, training={"shards": 2, "sync": False, "max_staleness": 1}
    )
    config = Config.load(path)
    async with processes(path, ("shard", 0), ("shard", 1), ("trainer", 0)) as procs:
        await publish_log(config, read_ctr_tsv(criteo_train, criteo=True, batch_size=32))
        await all_learned(config)
        assert all([await proc.stop() == 0 for proc in procs.values()])
    trainer = json.loads((tmp_path / "state" / "trainer-0.json").read_text())["trainer"]
    sync = Config.load(path)
    sync.training.sync = True
    reference = System(sync)
    async with reference:
        await replay(reference, read_ctr_tsv(criteo_train, criteo=True, batch_size=32))
    expected = reference.metrics.summary()["logloss"]
    assert trainer["events"] == 7200
    assert trainer["metrics"]["logloss"] == pytest.approx(expected, rel=0.01)
    assert 0 < trainer["staleness"]["mean_batches"] and trainer["staleness"]["max_batches"] <= 1


async def test_one_cluster_trainer_learns_event_by_event_as_one_process_does(
    tmp_path: Path, broker: Broker, topic_prefix: str
) -> None:
    """The trainer walks each batch event by event on its replica's z and n and vectors
    (the weight deltas carry them), so a CTR log learned by a cluster of 2 shards equals
    one process at batch size 1: the same progressive logloss and the same z and n."""
    from tests.test_exact import synthetic_ctr

    log = synthetic_ctr(tmp_path / "ctr.tsv", 2000)
    path = cluster_config(
        tmp_path, broker, topic_prefix, training={"shards": 2, "exact_factors": True},
        model={"bits": 20, "factors_dense": True},
    )  # fmt: skip
    config = Config.load(path)
    async with processes(path, ("shard", 0), ("shard", 1), ("trainer", 0)) as procs:
        published = await publish_log(config, read_ctr_tsv(log, criteo=False, batch_size=256))
        assert published["published"] == 2000
        await asyncio.wait_for(
            wait_until_consumed(config, f"{topic_prefix}-trainers", "events", 1), LEARN_TIMEOUT
        )
        codes = [await proc.stop() for proc in procs.values()]
    assert codes == [0] * 3, [p.log.read_text()[-2000:] for p in procs.values()]

    per_event = Config.load(path)
    per_event.training.shards, per_event.training.batch_size = 1, 1
    async with System(per_event) as embedded:
        await replay(embedded, read_ctr_tsv(log, criteo=False, batch_size=1))
    z, n, _ = model_from_checkpoints(config)
    np.testing.assert_allclose(z, embedded.store.z, rtol=0, atol=1e-9)
    np.testing.assert_allclose(n, embedded.store.n, rtol=0, atol=1e-9)
    trainer = json.loads((tmp_path / "state" / "trainer-0.json").read_text())
    ours, theirs = trainer["trainer"]["metrics"], embedded.metrics.summary()
    assert ours["logloss"] == pytest.approx(theirs["logloss"], abs=1e-9)
    assert ours["labelled"] == theirs["labelled"] == 2000


async def ranker_caught_up(
    http: Any, url: str, prefix: str, events: int, shards: int
) -> dict[str, Any]:
    """The ranker's statistics once its replicas have the weight deltas of every events
    record it sent (one per shard) and its history has followed ``events`` interactions."""
    stats: dict[str, Any] = {}
    for _ in range(1200):
        async with http.get(f"{url}/v1/stats") as resp:
            stats = await resp.json()
        sent = stats["queues"].get(f"{prefix}.events", {}).get("sent", 0)
        if stats["weight_deltas"] >= sent * shards and stats["followed_events"] >= events:
            return stats
        await asyncio.sleep(0.05)  # another process's progress
    raise AssertionError(f"the ranker did not catch up: {stats}")


async def test_ranker_serves_fresh_recommendations_over_http(
    tmp_path: Path, broker: Broker, topic_prefix: str
) -> None:
    import aiohttp

    path = cluster_config(
        tmp_path, broker, topic_prefix, training={"shards": 2, "sync": True}, http={"port": 0}
    )
    config = Config.load(path)
    items = [
        {"item": f"{g}-{k}", "item_features": {"genre": [g]}}
        for g in ("war", "comedy")
        for k in range(10)
    ]
    # fans of each genre first: with one user alone, which unseen items rank first rests on
    # which were drawn as her negatives (the publisher's time-based seqs seed the draws),
    # and about 1 run in 10 put comedies first (an embedded run over 60 seeds)
    clicks = [
        {"user": f"{g}-fan-{u}", "item": f"{g}-{(u + k) % 10}"}
        for u in range(4)
        for g in ("war", "comedy")
        for k in range(10)
    ]
    clicks += [{"user": "alice", "item": f"war-{k % 5}"} for k in range(40)]
    async with processes(path, ("shard", 0), ("shard", 1), ("trainer", 0)) as procs:
        ranker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime", "ranker", "--id", "0", "--config", str(path), "--port", "0",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=(tmp_path / "ranker.log").open("w"),
        )  # fmt: skip
        try:
            assert ranker.stdout is not None
            line = (await asyncio.wait_for(ranker.stdout.readline(), READY_TIMEOUT)).decode()
            assert line.startswith("freshrank ranker ready http://"), (
                tmp_path / "ranker.log"
            ).read_text()
            url = line.split()[3]
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{url}/v1/events", json=[*items, {"user": 1}]) as resp:
                    body = await resp.json()
                    assert resp.status == 200 and body["accepted"] == 20 and body["rejected"] == 1
                for lo in range(0, len(clicks), 4):  # clicks arrive over time, 4 per request
                    async with http.post(f"{url}/v1/events", json=clicks[lo : lo + 4]) as resp:
                        assert resp.status == 200
                await all_learned(config)
                # alice's clicks in her history too: they are what "seen" excludes
                stats = await ranker_caught_up(http, url, topic_prefix, len(clicks), shards=2)
                async with http.get(
                    f"{url}/v1/recommend", params={"user": "alice", "k": "5"}
                ) as resp:
                    recommended = [it["item"] for it in (await resp.json())["items"]]
            assert all(item.startswith("war-") for item in recommended), recommended
            assert not set(recommended) & {f"war-{k}" for k in range(5)}  # seen items excluded
            assert stats["catalog_items"] == 20 and stats["freshness"]["count"] > 0
            assert stats["freshness"]["p99_ms"] >= stats["freshness"]["p50_ms"] > 0
        finally:
            ranker.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(ranker.wait(), READY_TIMEOUT) == 0
        for proc in procs.values():
            assert await proc.stop() == 0


async def test_a_ranker_maps_feedback_types_before_publishing(
    tmp_path: Path, broker: Broker, topic_prefix: str
) -> None:
    """Cluster ingest validates an event's type as the System does (an unknown one is
    refused with its reason); the trainer and the ranker's history learn the published
    batch's seen flags: a dislike hides its item, a view does not."""
    import aiohttp

    path = cluster_config(
        tmp_path, broker, topic_prefix, training={"shards": 1, "sync": True}, http={"port": 0}
    )
    config = Config.load(path)
    items = [{"item": f"i{k}"} for k in range(6)]
    events = [
        {"user": "alice", "item": "i0"},
        {"user": "alice", "item": "i1", "type": "dislike"},
        {"user": "alice", "item": "i2", "type": "view"},
        {"user": "alice", "item": "i3", "type": "teleport"},
    ]
    async with processes(path, ("shard", 0), ("trainer", 0), ("ranker", 0)) as procs:
        url = procs["ranker-0"].ready_line.split()[3]
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v1/events", json=items) as resp:
                assert resp.status == 200 and (await resp.json())["accepted"] == 6
            async with http.post(f"{url}/v1/events", json=events) as resp:
                body = await resp.json()
            assert resp.status == 200 and (body["accepted"], body["rejected"]) == (3, 1)
            assert body["errors"][0]["index"] == 3
            assert "'teleport' is not one of click, dislike" in body["errors"][0]["reason"]
            await all_learned(config)
            await ranker_caught_up(http, url, topic_prefix, 3, shards=1)
            async with http.get(f"{url}/v1/recommend", params={"user": "alice", "k": "6"}) as resp:
                recommended = {it["item"] for it in (await resp.json())["items"]}
        assert recommended == {"i2", "i3", "i4", "i5"}
        for proc in procs.values():
            assert await proc.stop() == 0


def test_unreachable_broker_is_a_clear_error_not_a_traceback_storm(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import free_port

    path = write_config(
        tmp_path / "c.toml",
        {"kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}", "connect_timeout": 2.0}},
    )
    proc = subprocess.run(
        [sys.executable, "-m", "runtime", "shard", "--id", "0", "--config", str(path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "not reachable after 2 s" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert 2 <= proc.stderr.count("retrying in") <= 10


async def test_a_ranker_follows_an_events_batch_only_after_its_item_upserts() -> None:
    """The ranker reads the events and items topics with two followers; an events batch
    read first must wait, or its items get other catalog rows than the trainers gave
    them (under load the cluster then served other lists than the embedded run)."""
    from actors.batching import batch_from_events
    from actors.events import validate_event
    from actors.model import build_model
    from runtime.cluster import HistoryFollower, ItemsFollower
    from runtime.transport import Envelope

    model = build_model(Config())
    items = ItemsFollower(model, None)
    history = HistoryFollower(model, items)
    upserts = batch_from_events([validate_event({"item": name}) for name in ("b", "a")])
    clicks = batch_from_events([validate_event({"user": "u", "item": "a"})])
    clicks.items_upto = [0]  # the items record at offset 0 of partition 0
    following = asyncio.ensure_future(history.apply(clicks))
    await asyncio.sleep(0)
    assert not following.done() and len(model.catalog) == 0
    await items.handle_envelope(Envelope(upserts, (0, 0)))
    await asyncio.wait_for(following, 5.0)
    assert history.events == 1
    assert model.catalog.ids == ["b", "a"]


async def test_a_broker_that_lost_its_topics_stops_every_process_with_the_reason(
    tmp_path: Path, topic_prefix: str, ml_subset: Path
) -> None:
    """A broker with memory storage restarts and has lost every topic: the shard, the
    trainer and the ranker each stop with the reason, instead of accepting events and
    learning nothing while /v1/healthz says ok."""
    from tests.conftest import free_port, start_broker, stop_broker

    port = free_port()
    first = start_broker(port)
    brokers = [first]
    try:
        broker = Broker(f"127.0.0.1:{port}", first)
        path = cluster_config(
            tmp_path, broker, topic_prefix, training={"shards": 1}, http={"port": 0},
            kafka={"broker_check_s": 0.5, "connect_timeout": 60.0},
        )  # fmt: skip
        config = Config.load(path)
        async with processes(path, ("shard", 0), ("trainer", 0), ("ranker", 0)) as procs:
            published = await publish_log(config, read_movielens(ml_subset, 2_000))
            await all_learned(config)
            url = procs["ranker-0"].ready_line.split()[3]
            import aiohttp

            async with aiohttp.ClientSession() as http:
                for _ in range(1200):  # the ranker follows the topics (another process)
                    async with http.get(f"{url}/v1/stats") as resp:
                        stats = await resp.json()
                    if stats["followed_events"] >= published["published"]:
                        break
                    await asyncio.sleep(0.05)
            stop_broker(first)
            brokers.append(start_broker(port))  # same address, empty
            codes = {
                name: await asyncio.wait_for(proc.process.wait(), LEARN_TIMEOUT)
                for name, proc in procs.items()
            }
        assert codes == {"shard-0": 1, "trainer-0": 1, "ranker-0": 1}
        for name in codes:
            log = (tmp_path / f"{name}.log").read_text()
            assert "BrokerLostLog" in log and "lost the topic's records" in log, log[-3000:]
    finally:
        for process in brokers:
            stop_broker(process)


async def test_a_trainer_whose_group_committed_beyond_the_log_end_stops_with_the_reason(
    tmp_path: Path, broker: Broker, topic_prefix: str
) -> None:
    """The broker kept the trainers' committed offsets but lost the events (or the topic was
    created anew): a starting trainer says so and exits 2, instead of relearning from the
    start without a word."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    path = cluster_config(tmp_path, broker, topic_prefix, training={"shards": 1})
    config = Config.load(path)
    transport = KafkaTransport(config)
    await transport.start()  # the topics, empty
    await transport.stop()
    group = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=f"{topic_prefix}-trainers",
                             enable_auto_commit=False)  # fmt: skip
    await group.start()
    try:
        events = TopicPartition(f"{topic_prefix}.events", 0)
        group.assign([events])
        await group.commit({events: 50})
    finally:
        await group.stop()
    trainer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runtime", "trainer", "--id", "0", "--config", str(path),
        cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(trainer.communicate(), READY_TIMEOUT)
    assert trainer.returncode == 2, err.decode()[-2000:]
    assert "partition 0 committed 50, log end 0" in err.decode(), err.decode()[-2000:]
