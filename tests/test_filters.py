"""Request-time filters by the items' own features and a diversity cap (issue 13): over
the Python API, GET and POST /v1/recommend and the client; a bad filter is a 400 that
says what is wrong."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from actors.filters import ItemFilter
from runtime.client import AsyncClient
from runtime.http import make_app
from runtime.system import System
from tests.conftest import embedded_with

GENRES = ("war", "drama", "comedy")
ITEMS = [
    {
        "item": f"i{k}",
        "item_features": {
            "genre": [GENRES[k % 3]] + (["drama"] if k % 5 == 0 and k % 3 != 1 else []),
            "price": float(k),
            "brand": f"b{k % 2}",
        },
    }
    for k in range(30)
]
ITEMS.append({"item": "no-price", "item_features": {"genre": ["war"]}})
CLICKS = [{"user": f"u{u}", "item": f"i{(u * 7 + j) % 30}"} for u in range(20) for j in range(6)]
CLICKS += [{"user": "ann", "item": f"i{k}"} for k in (0, 3, 6)]
FEATURES = {it["item"]: it["item_features"] for it in ITEMS}


def passes(item: str, flt: dict[str, Any]) -> bool:
    """The filter's meaning, written out plainly."""
    features = FEATURES[item]

    def values(name: str) -> set[str]:
        value = features.get(name)
        if value is None:
            return set()
        return {str(v) for v in value} if isinstance(value, list) else {str(value)}

    def listed(value: Any) -> set[str]:
        return {str(v) for v in value} if isinstance(value, list) else {str(value)}

    include = all(values(n) & listed(v) for n, v in flt.get("include", {}).items())
    exclude = not any(values(n) & listed(v) for n, v in flt.get("exclude", {}).items())
    inside = all(
        isinstance(features.get(n), float)
        and (lo is None or features[n] >= lo)
        and (hi is None or features[n] <= hi)
        for n, (lo, hi) in flt.get("range", {}).items()
    )
    return include and exclude and inside


@pytest.fixture
async def system() -> AsyncIterator[System]:
    async with embedded_with(ITEMS, CLICKS) as system:
        yield system


FILTERS = [
    {"include": {"genre": "war"}},
    {"include": {"genre": ["war", "comedy"], "brand": "b1"}},
    {"exclude": {"genre": ["drama"]}},
    {"range": {"price": [5, 12.5]}},
    {"range": {"price": [None, 3]}, "exclude": {"brand": ["b0"]}},
    {"include": {"genre": "drama"}, "range": {"price": [10, None]}},
]


@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: json.dumps(f))
async def test_only_items_that_pass_are_recommended(system: System, flt: dict[str, Any]) -> None:
    k = 30
    answer = await system.recommend("ann", k=k, item_filter=ItemFilter.from_dict(flt))
    items = [it["item"] for it in answer]
    seen = {"i0", "i3", "i6"}
    expected = {i for i in FEATURES if passes(i, flt)} - seen
    assert set(items) == expected and len(items) == len(expected) > 0
    every = [it["item"] for it in await system.recommend("ann", k=len(FEATURES))]
    assert items == [i for i in every if i in expected]  # the same order, filtered


async def test_a_diversity_cap_keeps_the_order_and_at_most_n_per_value(system: System) -> None:
    every = [it["item"] for it in await system.recommend("ann", k=len(FEATURES))]
    capped = await system.recommend("ann", k=6, item_filter=ItemFilter(max_per={"genre": 2}))
    items = [it["item"] for it in capped]
    counts: dict[str, int] = {}
    expected = []
    for item in every:  # greedy in score order: an item counts for each of its genres
        genres = FEATURES[item]["genre"]
        if all(counts.get(g, 0) < 2 for g in genres):
            expected.append(item)
            for g in genres:
                counts[g] = counts.get(g, 0) + 1
    assert items == expected[:6] and len(items) == 6
    brands = ItemFilter(max_per={"brand": 1})
    one_each = [it["item"] for it in await system.recommend("ann", k=10, item_filter=brands)]
    # the best of b0, the best of b1, and the item without a brand, which no cap counts
    assert sorted(FEATURES[i].get("brand", "-") for i in one_each) == ["-", "b0", "b1"]


async def test_filters_apply_to_given_candidates_and_sessions(system: System) -> None:
    war = ItemFilter.from_dict({"include": {"genre": "war"}})
    picked = await system.recommend("ann", k=5, candidates=["i1", "i9", "i12"], item_filter=war)
    assert {it["item"] for it in picked} == {"i9", "i12"}
    anonymous = await system.recommend("", k=40, session=["i1"], item_filter=war)
    assert anonymous and all(passes(it["item"], {"include": {"genre": "war"}}) for it in anonymous)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ([], "'filter' must be an object"),
        ({"inclde": {}}, "unknown filter key(s) ['inclde']"),
        ({"include": {"genre": []}}, "filter 'include.genre' must be a value or a list"),
        ({"include": ["genre"]}, "filter 'include' must be an object of feature names"),
        ({"range": {"price": [5, 1]}}, "filter 'range.price' must have lo <= hi"),
        ({"range": {"price": "cheap"}}, "filter 'range.price' must be [lo, hi]"),
        ({"max_per": {"genre": 0}}, "filter 'max_per.genre' must be an integer in 1..1000"),
        ({"exclude": {"a=b": "x"}}, "'a=b' is not a feature name"),
    ],
)
def test_a_bad_filter_says_what_is_wrong(bad: Any, reason: str) -> None:
    with pytest.raises(ValueError) as error:
        ItemFilter.from_dict(bad)
    assert reason in str(error.value)


async def test_filters_over_http_and_the_client(system: System) -> None:
    flt = {"include": {"genre": ["war"]}, "max_per": {"brand": 1}}
    direct = [
        it["item"]
        for it in await system.recommend("ann", k=5, item_filter=ItemFilter.from_dict(flt))
    ]
    assert len(direct) == 3 and all(passes(i, flt) for i in direct)  # b0, b1, no brand
    async with TestClient(TestServer(make_app(system), host="127.0.0.1", port=0)) as http:
        resp = await http.get("/v1/recommend", params={"user": "ann", "filter": json.dumps(flt)})
        assert resp.status == 200 and [it["item"] for it in (await resp.json())["items"]] == direct
        resp = await http.post("/v1/recommend", json={"user": "ann", "k": 10, "filter": flt})
        assert resp.status == 200 and [it["item"] for it in (await resp.json())["items"]] == direct
        bad = await http.get("/v1/recommend", params={"user": "ann", "filter": "{nope"})
        assert bad.status == 400 and "'filter' must be a JSON object" in (await bad.json())["error"]
        twice = '{"exclude": {"brand": ["b0"]}, "exclude": {"brand": ["b1"]}}'
        bad = await http.get("/v1/recommend", params={"user": "ann", "filter": twice})
        reason = (await bad.json())["error"]
        assert bad.status == 400 and reason == "'filter': duplicate key 'exclude'"
        bad = await http.post("/v1/recommend", json={"user": "ann", "filter": {"max_per": 3}})
        body = await bad.json()
        assert bad.status == 400 and "filter 'max_per' must be an object" in body["error"]
        url = str(http.make_url("")).rstrip("/")
        async with AsyncClient(url) as client:
            assert [it["item"] for it in await client.recommend("ann", item_filter=flt)] == direct


def test_the_mask_reads_the_catalog_as_stored() -> None:
    from actors.features import Catalog, FeatureSpace

    space, catalog = FeatureSpace(bits=18), Catalog()
    for item, genre, price in (("a", "war", 3.0), ("b", "drama", 7.0), ("c", "war", 9.0)):
        names = ["i.genre", "i.price"]
        ns = np.array([space.ns_hash(n) for n in names], np.uint32)
        raw = np.array([space.value_hash("i.genre", genre), space.value_hash("i.price", "")])
        catalog.upsert(item, 0, ns, raw.astype(np.uint32), np.array([1.0, price]), [])
    rows = np.arange(3)
    war = ItemFilter.from_dict({"include": {"genre": "war"}, "range": {"price": [None, 5]}})
    assert war.allowed(space, catalog, rows).tolist() == [True, False, False]
    assert ItemFilter().allowed(space, catalog, rows).all() and not ItemFilter()


async def test_a_repeated_filter_follows_the_catalog(system: System) -> None:
    """The ranker remembers a filter's verdict per item (and an item's capped groups) until
    the catalog changes: an upsert that moves an item into a genre or out of it shows in
    the next answer to the same filter, as to a new one."""
    war = ItemFilter.from_dict({"include": {"genre": "war"}})
    capped = ItemFilter(max_per={"genre": 1})

    async def answer(item_filter: ItemFilter) -> list[str]:
        return [it["item"] for it in await system.recommend("ann", k=40, item_filter=item_filter)]

    assert "i1" not in await answer(war) and "i1" not in await answer(war)
    genres_before = sorted(FEATURES[i]["genre"][0] for i in await answer(capped))
    moved = {**FEATURES["i1"], "genre": ["war"]}
    assert (await system.ingest([{"item": "i1", "item_features": moved}])).rejected == 0
    assert "i1" in await answer(war)
    assert not any(system.ranker.filters.allowed(war, system.ranker.space, system.catalog,
                                                 np.array([system.catalog.rows["i4"]])))  # fmt: skip
    drama = [i for i in FEATURES if FEATURES[i]["genre"] == ["drama"] and i not in ("i1",)]
    for item in drama:  # no drama left: the cap's groups are read again
        changed = {**FEATURES[item], "genre": ["comedy"]}
        assert (await system.ingest([{"item": item, "item_features": changed}])).rejected == 0
    genres_after = [FEATURES[i]["genre"][0] for i in await answer(capped)]
    assert len(genres_before) == 3 and len(genres_after) < len(genres_before)


def test_the_cache_gives_the_filters_own_verdicts() -> None:
    """FilterCache.allowed equals ItemFilter.allowed for any rows asked in any order, with
    more filters than it keeps."""
    from actors.features import Catalog, FeatureSpace
    from actors.filters import FilterCache

    space, catalog = FeatureSpace(bits=18), Catalog()
    rng = np.random.default_rng(5)
    names = ["i.genre", "i.price"]
    ns = np.array([space.ns_hash(n) for n in names], np.uint32)
    for k in range(200):
        genre = GENRES[int(rng.integers(3))]
        raw = np.array([space.value_hash("i.genre", genre), space.value_hash("i.price", "")])
        catalog.upsert(f"i{k}", 0, ns, raw.astype(np.uint32), np.array([1.0, float(k)]), [])
    cache = FilterCache(size=2)
    filters = [ItemFilter.from_dict(f) for f in FILTERS if "brand" not in json.dumps(f)]
    for _ in range(5):
        for item_filter in filters:
            rows = rng.integers(0, 200, 60)
            expected = item_filter.allowed(space, catalog, rows)
            assert cache.allowed(item_filter, space, catalog, rows).tolist() == expected.tolist()
