"""The live dashboard: its sampling and top-items logic, its endpoints, and the page itself
in a real headless Chromium (Debian's package, driven by Playwright).

The browser test skips when chromium is absent, unless CI_REQUIRE_BROWSER=1 (CI) makes
that a failure. It saves a screenshot to tests/artifacts/dashboard.png.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from runtime.cluster import ClusterFront
from runtime.config import Config
from runtime.dashboard import (
    DASHBOARD_KEY,
    STATIC_DIR,
    StatsHistory,
    Trending,
    number,
    run_means,
    sample_values,
)
from runtime.http import make_app
from runtime.system import System

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HISTORY_MINUTES = 20
CHARTS = ("throughput", "logloss", "auc", "ranking", "f1", "freshness", "queues", "shards")
GENRES = ("drama", "war", "comedy", "noir", "western", "musical")
N_ITEMS = 40
N_USERS = 30
BAD_EVENTS: list[Any] = [
    {"user": "u1", "item": "m1", "colour": "red"},
    {"user": "u2", "item": "m2", "label": 7},
    {"user": "u3", "item": "m3", "weight": -1},
    {"user": "u4", "item": "m4", "colour": "blue"},
    "not an event",
]


# --------------------------------------------------------------------------- data


def catalog_events() -> list[dict[str, Any]]:
    return [
        {"item": f"m{n}", "item_features": {"genre": GENRES[n % len(GENRES)]}}
        for n in range(N_ITEMS)
    ]


def interactions(seed: int, n: int) -> list[dict[str, Any]]:
    """Skewed item popularity (a few items get most clicks); two thirds carry a 0/1 label."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, N_ITEMS + 1)
    items = rng.choice(N_ITEMS, n, p=popularity / popularity.sum())
    users = rng.integers(0, N_USERS, n)
    labels = rng.integers(0, 3, n)  # 2: implicit positive
    events: list[dict[str, Any]] = []
    for item, user, label in zip(items, users, labels, strict=True):
        event: dict[str, Any] = {
            "user": f"u{user}",
            "item": f"m{item}",
            "user_features": {"age": ("18-24", "25-34", "35-49")[user % 3]},
        }
        if label < 2:
            event["label"] = int(label)
        events.append(event)
    return events


def system_config(tmp_path: Path) -> Config:
    return Config.from_dict(
        {
            "model": {"bits": 16},
            "training": {"shards": 2, "rank_eval_every": 5, "rank_eval_rows": 0, "batch_size": 64},
            "state": {"restore": False},
            "ingest": {"dead_letter_path": str(tmp_path / "dlq.jsonl")},
            # the sampling task sleeps through every test: tests sample explicitly
            "http": {"dashboard_sample_s": 3600.0, "dashboard_history_s": 86400.0},
        }
    )


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def served(
    tmp_path: Path, clock: FakeClock | None = None, http: dict[str, Any] | None = None
) -> AsyncIterator[tuple[System, TestServer]]:
    """A running System with a catalog, behind the full HTTP app on a free loopback port;
    the dashboard's clock is ``clock`` from its first sample (taken as the app starts)."""
    config = system_config(tmp_path)
    for key, value in (http or {}).items():
        setattr(config.http, key, value)
    async with System(config) as system:
        await system.ingest(catalog_events())
        app = make_app(system)
        if clock is not None:
            history = app[DASHBOARD_KEY].history
            history.clock = history.timer = clock  # statistics() takes no (fake) time
        async with TestServer(app, host="127.0.0.1", port=0) as server:
            yield system, server


# --------------------------------------------------------------------------- sampling


def test_number_reads_nested_finite_numbers_and_nothing_else() -> None:
    stats = {"a": {"b": [1, 2.5]}, "nan": math.nan, "flag": True, "text": "3"}
    assert number(stats, "a", "b", 1) == 2.5
    assert number(stats, "a", "b", 5) is None
    assert number(stats, "missing", "x") is None
    assert number(stats, "nan") is None
    assert number(stats, "flag") is None
    assert number(stats, "text") is None
    assert number(None, "a") is None


def fake_stats(events: int, shards: int = 1) -> dict[str, Any]:
    return {
        "hasher": {"events": events},
        "trainer": {"events": events, "rows": 3 * events, "in_flight": 0},
        "dead_letters": {"records": events // 10, "by_reason": {}},
        "learners": [{"shard": k, "nonzero_weights": events + k} for k in range(shards)],
        "queues": {"events": {"depth": 2}},
        "metrics": {
            "logloss": 0.5,
            "auc": 0.7,
            "hr@10": 0.3,
            "ndcg@10": 0.2,
            "baseline_popularity_hr@10": 0.25,
            "baseline_popularity_ndcg@10": 0.15,
            "precision@10": 0.03,
            "recall@10": 0.3,
            "f1@10": 0.05,
            "f1": 0.4,
            "best_f1": 0.45,
        },
    }


def test_history_samples_at_most_once_per_interval_and_computes_rates() -> None:
    clock = FakeClock()
    reading = {"events": 100}
    history = StatsHistory(
        lambda: fake_stats(reading["events"]), interval_s=1.0, clock=clock, timer=clock
    )
    assert history.maybe_sample()
    assert history.samples[-1].values["throughput/learned"] is None  # no earlier reading
    reading["events"] = 400
    clock.now += 0.5
    assert not history.maybe_sample()  # too soon: statistics() is not called again
    clock.now += 1.5
    assert history.maybe_sample()
    values = history.samples[-1].values
    assert values["throughput/learned"] == pytest.approx(300 / 2.0)
    assert values["throughput/learned rows"] == pytest.approx(900 / 2.0)
    assert values["throughput/rejected"] == pytest.approx((40 - 10) / 2.0)
    assert values["shards/shard 0"] == 400
    ranking = {key: value for key, value in values.items() if key.startswith("ranking/")}
    assert ranking == {
        "ranking/HR@10": 0.3,
        "ranking/NDCG@10": 0.2,
        "ranking/popularity HR@10": 0.25,
        "ranking/popularity NDCG@10": 0.15,
    }
    assert list(ranking)[:2] == ["ranking/HR@10", "ranking/NDCG@10"]  # the model first
    assert {key: value for key, value in values.items() if key.startswith("f1/")} == {
        "f1/precision@10": 0.03,
        "f1/recall@10": 0.3,
        "f1/F1@10": 0.05,
        "f1/labelled F1": 0.4,
        "f1/labelled best F1": 0.45,
    }
    assert values["queues/events"] == 2


def test_slow_statistics_stretch_the_sampling_interval() -> None:
    clock = FakeClock()

    def slow_statistics() -> dict[str, Any]:
        clock.now += 0.25
        return fake_stats(10)

    history = StatsHistory(slow_statistics, interval_s=1.0, clock=clock, timer=clock)
    assert history.maybe_sample()
    assert history.effective_interval_s == pytest.approx(20 * 0.25)
    clock.now += 4.0  # 4.25 s after the sample started: not due yet
    assert not history.maybe_sample()
    clock.now += 1.0
    assert history.maybe_sample()
    assert len(history.samples) == 2


def test_history_is_a_ring_and_since_returns_columns_with_gaps() -> None:
    clock = FakeClock()
    shards = {"n": 1}
    history = StatsHistory(
        lambda: fake_stats(10, shards["n"]), interval_s=1.0, capacity=3, clock=clock, timer=clock
    )
    times = []
    for step in range(5):
        shards["n"] = 1 if step < 3 else 2  # a series that appears later
        history.maybe_sample()
        times.append(clock.now)
        clock.now += 1.0
    assert [s.t for s in history.samples] == times[-3:]
    columns = history.since(times[2])
    assert columns["t"] == times[3:]
    assert columns["series"]["shards/shard 1"] == [11, 11]
    everything = history.since(0.0)
    assert everything["series"]["shards/shard 1"] == [None, 11, 11]


def test_statistics_without_a_trainer_or_learners_still_sample() -> None:
    """A cluster ranker's statistics: top-level freshness, Kafka queue counters, no learners."""
    stats = {
        "freshness": {"count": 3, "p50_ms": 4.0, "p99_ms": 9.0},
        "queues": {"events": {"sent": 5, "received": 5}},
        "trainer": {"learned_seq": None},
    }
    values = sample_values(stats, {})
    assert values["freshness/p50"] == 4.0
    assert values["freshness/p99"] == 9.0
    assert values["logloss/model"] is None
    assert not any(key.startswith(("shards/", "queues/")) for key in values)


# --------------------------------------------------------------------------- trending


def test_trending_counts_only_new_interactions_and_decays_them() -> None:
    trending = Trending(half_life_s=10.0)
    trending.update(np.array([50, 5, 0]), t=0.0)
    assert trending.recent.tolist() == [0.0, 0.0, 0.0]  # history before the first look
    assert [row for row, _, _ in trending.top(3)] == [0, 1, 2]  # then all-time counts
    trending.update(np.array([50, 9, 0, 2]), t=10.0)  # the catalog grew by one item
    assert trending.recent.tolist() == [0.0, 4.0, 0.0, 2.0]
    trending.update(np.array([50, 9, 0, 2]), t=20.0)  # one half-life, nothing new
    assert trending.recent.tolist() == pytest.approx([0.0, 2.0, 0.0, 1.0])
    assert trending.top(2) == [(1, pytest.approx(2.0), 9), (3, pytest.approx(1.0), 2)]
    assert [row for row, _, _ in trending.top(4)] == [1, 3, 0, 2]


def test_trending_starts_over_when_counts_shrink() -> None:
    trending = Trending(half_life_s=10.0)
    trending.update(np.array([5, 5]), t=0.0)
    trending.update(np.array([1]), t=1.0)
    assert trending.recent.tolist() == [0.0]
    assert trending.top(5) == [(0, 0.0, 1)]


# --------------------------------------------------------------------------- endpoints


async def test_endpoints_serve_the_page_series_and_top_items(tmp_path: Path) -> None:
    clock = FakeClock()
    async with served(tmp_path, clock) as (system, server), TestClient(server) as client:
        dashboard = server.app[DASHBOARD_KEY]
        started = clock.now  # the sample taken as the app started
        clicks = interactions(seed=1, n=300)
        await system.ingest(clicks)
        clock.now += 1.0
        dashboard.sample()
        page = await client.get("/")
        assert page.status == 200
        html = await page.text()
        assert "/static/vendor/uPlot.iife.min.js" in html and "/static/dashboard.js" in html
        for path in ("vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "dashboard.js"):
            served_file = await client.get(f"/static/{path}")
            assert served_file.status == 200, path
            assert await served_file.read() == (STATIC_DIR / path).read_bytes()

        series = await (await client.get("/v1/dashboard/series")).json()
        assert series["t"] == [started, clock.now] and series["now"] == clock.now
        assert series["series"]["throughput/learned"] == [None, pytest.approx(len(clicks))]
        assert series["headline"]["learned_events"] == len(clicks)
        assert series["series"]["shards/shard 0"][-1] > 0
        clock.now += 0.5  # a request only reads the history: no new sample
        later = await (await client.get(f"/v1/dashboard/series?since={series['t'][-1]}")).json()
        assert later["t"] == []

        top = await (await client.get("/v1/dashboard/top?k=3")).json()
        counts = collections.Counter(event["item"] for event in clicks)
        assert [entry["item"] for entry in top["items"]] == [i for i, _ in counts.most_common(3)]
        assert [entry["total"] for entry in top["items"]] == [c for _, c in counts.most_common(3)]
        assert all(entry["features"][0].startswith("i.genre=") for entry in top["items"])

        rare = counts.most_common()[-1][0]
        await system.ingest([{"user": f"new{n}", "item": rare} for n in range(3)])
        clock.now += 3600.0  # 60 half-lives: the first clicks are no longer recent
        dashboard.sample()
        top = await (await client.get("/v1/dashboard/top?k=3")).json()
        assert top["items"][0] == {
            "item": rare,
            "recent": pytest.approx(3.0),
            "total": counts[rare] + 3,
            "features": [f"i.genre={GENRES[int(rare[1:]) % len(GENRES)]}"],
        }
        later = await (await client.get(f"/v1/dashboard/series?since={series['t'][-1]}")).json()
        assert later["t"] == [clock.now]
        seconds = clock.now - series["t"][-1]
        assert later["series"]["throughput/learned"] == [pytest.approx(3 / seconds)]


async def test_history_is_kept_from_the_start_before_any_page_opens(tmp_path: Path) -> None:
    """The first load gets every sample since the app started, not just one.

    The sampling task may wake meanwhile (every 5 s of real time), but it samples on the
    fake clock, which only moves right before the test's own tick: it finds nothing due."""
    clock = FakeClock()
    config = {"dashboard_sample_s": 5.0, "dashboard_history_s": 86400.0}
    async with served(tmp_path, clock, config) as (system, server):
        dashboard = server.app[DASHBOARD_KEY]
        tasks = {task.get_name() for task in asyncio.all_tasks()}
        assert "dashboard-sampler" in tasks  # the process's own task, not a page's
        for seed in range(1, 6):
            await system.ingest(interactions(seed=seed, n=100))
            clock.now += 5.0
            dashboard.tick()
            dashboard.tick()  # not due again: nothing taken
        async with TestClient(server) as client:
            first_load = await (await client.get("/v1/dashboard/series?since=0")).json()
    assert first_load["t"] == [1000.0 + 5.0 * n for n in range(6)]
    learned = first_load["series"]["throughput/learned"]
    assert learned[0] is None and learned[1:] == [pytest.approx(100 / 5.0)] * 5
    assert first_load["capacity"] == 86400 // 5
    assert "dashboard-sampler" not in {task.get_name() for task in asyncio.all_tasks()}


async def test_a_cluster_rankers_dashboard_keeps_history_too(tmp_path: Path) -> None:
    """A ranker serves the same app: its history starts with the app, whatever it reports.
    Not started: nothing here needs the broker."""
    config = system_config(tmp_path)
    app = make_app(ClusterFront(config, 0))  # type: ignore[arg-type]
    clock = FakeClock()
    history = app[DASHBOARD_KEY].history
    history.clock = history.timer = clock
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        for _ in range(3):
            clock.now += 3600.0
            app[DASHBOARD_KEY].tick()
        series = await (await client.get("/v1/dashboard/series")).json()
    assert series["t"] == [1000.0 + 3600.0 * n for n in range(4)]
    assert series["headline"]["status"] == "ok" and series["sample_failures"] == 0


async def test_history_is_bounded_by_the_configured_span(tmp_path: Path) -> None:
    config = system_config(tmp_path)
    config.http.dashboard_sample_s, config.http.dashboard_history_s = 5.0, 50.0
    async with System(config) as system:
        dashboard = make_app(system)[DASHBOARD_KEY]
        clock = FakeClock()
        dashboard.history.clock = dashboard.history.timer = clock
        for _ in range(25):
            dashboard.sample()
            clock.now += 5.0
    assert dashboard.history.capacity == 10
    assert [s.t for s in dashboard.history.samples] == [1000.0 + 5.0 * n for n in range(15, 25)]
    assert len(dashboard.series(0.0)["t"]) == 10


def test_a_long_history_is_averaged_in_runs_keeping_the_newest() -> None:
    clock = FakeClock()
    events = {"n": 0}
    history = StatsHistory(lambda: fake_stats(events["n"]), capacity=17_280, clock=clock)
    history.timer = clock
    for step in range(17_280 + 5):
        events["n"] += 900 if step == 17_280 - 100 else 0  # one burst between two samples
        history.sample()
        clock.now += 5.0
    assert len(history.samples) == 17_280
    newest = history.samples[-1].t
    thinned = history.since(0.0, max_points=1000)
    assert len(thinned["t"]) <= 1000 and thinned["t"][-1] == newest
    steps = {b - a for a, b in zip(thinned["t"], thinned["t"][1:], strict=False)}
    assert steps == {5.0 * 18}
    learned = [rate for rate in thinned["series"]["throughput/learned"] if rate]
    assert learned == [pytest.approx(900 / (18 * 5.0))]  # the burst's run, averaged
    assert history.since(newest - 10.0)["t"] == [newest - 5.0, newest]


def test_run_means_ignore_gaps() -> None:
    table = np.array([[1.0, np.nan], [3.0, np.nan], [5.0, 2.0]])
    means = run_means(table, 2)
    assert means[0, 0] == 2.0 and math.isnan(means[0, 1])
    assert means[1].tolist() == [5.0, 2.0]
    assert run_means(table, 1) is table


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("/v1/dashboard/series?since=yesterday", "'since' must be a number"),
        ("/v1/dashboard/series?since=nan", "'since' must be a number"),
        ("/v1/dashboard/top?k=0", "'k' must be in 1..100"),
        ("/v1/dashboard/top?k=ten", "'k' must be an integer"),
    ],
)
async def test_bad_dashboard_queries_get_a_400_with_the_reason(
    tmp_path: Path, query: str, reason: str
) -> None:
    async with served(tmp_path) as (_, server), TestClient(server) as client:
        response = await client.get(query)
        assert response.status == 400
        assert reason in (await response.json())["error"]


async def test_top_items_explain_why_they_are_missing(tmp_path: Path) -> None:
    config = system_config(tmp_path)
    config.training.popularity_baseline = False
    async with System(config) as system:
        app = make_app(system)
        top = app[DASHBOARD_KEY].top(5)
    assert top["available"] is False and top["items"] == []
    assert "popularity_baseline" in top["reason"]


# --------------------------------------------------------------------------- the browser


def chromium_or_skip() -> str:
    """Debian's chromium; its absence skips locally and fails where CI_REQUIRE_BROWSER=1."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "chromium is not installed (apt-get install chromium): dashboard page untested"
        if os.environ.get("CI_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CI_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return path


async def wait_until(page: Any, condition: str, what: str) -> None:
    """Wait for a JS condition; on timeout say what never happened and what the page shows."""
    try:
        await page.wait_for_function(condition, timeout=30_000)
    except Exception as error:
        state = await page.evaluate(
            "() => JSON.stringify({points: window.freshrankDashboard?.points,"
            " polls: window.freshrankDashboard?.polls,"
            " failures: window.freshrankDashboard?.failures})"
        )
        raise AssertionError(f"the page never showed {what}: {state}") from error


async def check_first_load(page: Any) -> None:
    """The first poll brought the history: many points per chart, on an axis from the first
    sample to now labelled with wall-clock times."""
    history = await page.evaluate("() => window.freshrankDashboard.history.t.length")
    assert history == HISTORY_MINUTES + 1  # the sample at the start, then one a minute
    points = await page.evaluate("() => window.freshrankDashboard.points")
    assert set(points) == set(CHARTS), points
    assert points["throughput"] >= HISTORY_MINUTES and points["shards"] > HISTORY_MINUTES, points
    assert all(n > 0 for n in points.values()), points
    for chart in CHARTS:
        assert int(await page.get_attribute(f"#chart-{chart}", "data-points") or 0) > 0
        assert await page.locator(f"#chart-{chart} canvas").count() == 1, chart
    await wait_until(
        page, "() => window.freshrankDashboard.axisLabels.throughput?.length > 1", "time labels"
    )
    labels = await page.evaluate("() => window.freshrankDashboard.axisLabels.throughput")
    assert all(re.fullmatch(r"\d\d:\d\d", label) for label in labels), labels
    span = await page.evaluate(
        "() => { const x = window.freshrankDashboard.charts.throughput.uplot.scales.x;"
        " return x.max - x.min; }"
    )
    assert span == pytest.approx(HISTORY_MINUTES * 60.0, abs=1.0)  # not the default years


async def test_dashboard_page_in_headless_chromium(tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    from playwright.async_api import async_playwright

    problems: list[str] = []
    record: Callable[[str], None] = problems.append
    clock = FakeClock(time.time() - HISTORY_MINUTES * 60.0)
    async with served(tmp_path, clock) as (system, server), async_playwright() as playwright:
        dashboard = server.app[DASHBOARD_KEY]
        first = await system.ingest(interactions(seed=1, n=300) + BAD_EVENTS)
        assert first.rejected == len(BAD_EVENTS)
        for minute in range(HISTORY_MINUTES):  # the daemon's past, before any page opens
            await system.ingest(interactions(seed=100 + minute, n=30))
            clock.now += 60.0
            dashboard.sample()
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: record(f"console: {m.text}") if m.type == "error" else 0)
            page.on("pageerror", lambda error: record(f"page error: {error}"))
            await page.goto(str(server.make_url("/")))
            await wait_until(page, "() => window.freshrankDashboard.polls >= 1", "a first poll")
            await check_first_load(page)

            await system.ingest(interactions(seed=2, n=300))
            clock.now += 60.0
            dashboard.sample()
            await wait_until(
                page,
                f"() => window.freshrankDashboard.history.t.length === {HISTORY_MINUTES + 2}",
                "the sample taken after the first load",
            )

            await page.wait_for_selector("#top-items tbody tr")
            assert await page.locator("#top-items tbody tr").count() == 10
            kinds = system.statistics()["dead_letters"]["by_reason"]
            shown_counts = page.locator("#rejected tbody td.num")
            assert await shown_counts.count() == len(kinds) > 0
            assert sum(map(int, await shown_counts.all_inner_texts())) == len(BAD_EVENTS)

            await page.fill("#recommend-user", "u3")
            await page.click("#recommend-form button[type=submit]")
            await page.wait_for_selector("#recommend-result tr.recommendation")
            rows = page.locator("#recommend-result tr.recommendation")
            assert await rows.count() == 10
            for index in range(10):
                assert await rows.nth(index).locator("li.feature").count() >= 1
            expected = await system.recommend("u3", 10, explain=True)
            shown = page.locator("#recommend-result tr.recommendation td:nth-child(2)")
            assert await shown.all_inner_texts() == [entry["item"] for entry in expected]

            first_item = expected[0]["item"]
            await page.click("#recommend-result tr.recommendation .item-link >> nth=0")
            await page.wait_for_selector("#inspect-result:not([hidden])")
            assert await page.input_value("#inspect-item") == first_item
            inspected = await system.inspect(first_item)
            neighbours = page.locator("#inspect-neighbours tr.scored td:first-child")
            assert inspected["neighbours"]  # random co-clicks: every popular item has some
            assert await neighbours.all_inner_texts() == [
                n["item"] for n in inspected["neighbours"]
            ]
            shown_field = page.locator("#inspect-exposure dd[data-field=shown]")
            assert int(await shown_field.inner_text()) >= 1  # it was in the answer above
            assert await page.locator("#inspect-features li.feature").count() == len(
                inspected["features"]
            )
            assert problems == []
            await page.fill("#inspect-item", "no-such-item")
            await page.click("#inspect-form button[type=submit]")
            await page.wait_for_selector("#inspect-error:not([hidden])")
            assert "unknown item" in await page.inner_text("#inspect-error")
            # the browser logs the deliberate 404 itself; nothing else may be logged
            assert all("status of 404" in problem for problem in problems), problems
            problems.clear()

            ARTIFACTS.mkdir(exist_ok=True)
            screenshot = ARTIFACTS / "dashboard.png"
            await page.screenshot(path=str(screenshot), full_page=True)
            print(f"dashboard screenshot: {screenshot}")
        finally:
            await browser.close()
    assert problems == []


# --------------------------------------------------------------------------- experiments

EXPERIMENT = {
    "model": {"bits": 16},
    "training": {"rank_eval_every": 2, "rank_eval_rows": 0},
    "state": {"restore": False},
    "ingest": {"dead_letter_path": ""},
    "labels": {"window_s": 60.0},
    "http": {"dashboard_sample_s": 3600.0},
    "experiments": {
        "seed": 7,
        "interleaving": True,
        "variants": {
            "control": {"share": 0.5},
            "broken": {
                "share": 0.5,
                "ftrl": {"alpha": 1e-6, "factor_alpha": 1e-6},  # a broken learning rate
                "sequence": {"enabled": False},
                "training": {"negatives": 4},
            },
        },
    },
}


async def clicked_interleaved_answers(system: System) -> None:
    """Interleaved answers to 20 users, who click only what the control team picked."""
    shown, clicks = [], []
    for n in range(20):
        answer = await system.recommend(f"u{n}", k=4)
        for rank, entry in enumerate(answer):
            key = f"u{n}-{rank}"
            shown.append({"event": "impression", "impression_id": key, "user": f"u{n}",
                          "item": entry["item"], "ts": 1_700_100_000.0})  # fmt: skip
            if entry["team"] == "control":
                clicks.append({"event": "click", "impression_id": key, "ts": 1_700_100_001.0})
    await system.ingest(shown + clicks)
    await system.flush_labels(1_700_100_100.0)


async def check_experiments_view(page: Any, report: dict[str, Any]) -> None:
    """One row per variant with each metric's value and interval as the report has them,
    the interleaving line, and a chart of the variants' metrics."""
    await page.wait_for_selector("#experiments:not([hidden]) tr.variant")
    rows = page.locator("#experiments tr.variant")
    assert await rows.count() == len(report["variants"]) == 2
    for name, variant in report["variants"].items():
        row = page.locator(f"#experiments tr.variant[data-variant={name}]")
        cells = row.locator("td.estimate-cell")
        assert await cells.count() == 3
        hr = variant["hr@10"]
        text = await cells.nth(0).inner_text()
        assert f"n = {hr['n']}" in text and "–" in text, text
        assert await row.locator(".ci .span").count() == 3
    control, broken = report["variants"]["control"]["hr@10"], report["variants"]["broken"]["hr@10"]
    assert control["low"] > broken["high"]  # the view then shows two bars apart
    spans = page.locator("#experiments tr.variant td.estimate-cell:nth-child(4) .ci .span")
    boxes = {await spans.nth(i).evaluate("n => n.closest('tr').dataset.variant"):
             await spans.nth(i).bounding_box() for i in range(2)}  # fmt: skip
    assert boxes["control"]["x"] > boxes["broken"]["x"] + boxes["broken"]["width"]
    line = await page.inner_text("#experiments-interleaving")
    assert line.startswith("interleaving: broken won 0 of") and "ties" in line, line
    await wait_until(page, "() => window.freshrankDashboard.points.experiments > 0", "a chart")
    assert await page.locator("#chart-experiments canvas").count() == 1


async def test_experiments_view_in_headless_chromium(tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    from playwright.async_api import async_playwright

    from actors.simulator import Simulator, SimulatorConfig

    problems: list[str] = []
    record: Callable[[str], None] = problems.append
    simulated = SimulatorConfig(seed=3, n_users=150, n_items=120, impressions_per_event=False)
    async with System.from_config(EXPERIMENT) as system:
        await system.ingest(Simulator(simulated).next_batch(4000))
        await clicked_interleaved_answers(system)
        app = make_app(system)
        async with TestServer(app, host="127.0.0.1", port=0) as server, async_playwright() as pw:
            app[DASHBOARD_KEY].sample()
            report = system.statistics()["experiments"]
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 900})
                page.on(
                    "console", lambda m: record(f"console: {m.text}") if m.type == "error" else 0
                )
                page.on("pageerror", lambda error: record(f"page error: {error}"))
                await page.goto(str(server.make_url("/")))
                await wait_until(page, "() => window.freshrankDashboard.polls >= 1", "a poll")
                await check_experiments_view(page, report)

                await page.fill("#recommend-user", "u3")
                await page.click("#recommend-form button[type=submit]")
                await page.wait_for_selector("#recommend-result tr.recommendation")
                assert (
                    await page.inner_text("#recommend-variant") == "ranked by variant interleaved"
                )
                teams = await page.locator("#recommend-result .team").all_inner_texts()
                assert len(teams) == 10 and set(teams) <= {"control", "broken"}

                ARTIFACTS.mkdir(exist_ok=True)
                screenshot = ARTIFACTS / "dashboard-experiments.png"
                await page.locator("#experiments").screenshot(path=str(screenshot))
                await page.screenshot(path=str(ARTIFACTS / "dashboard-experiments-page.png"),
                                      full_page=True)  # fmt: skip
                print(f"experiments view screenshot: {screenshot}")
            finally:
                await browser.close()
    assert problems == []
