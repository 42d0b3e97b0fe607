"""``GET /v1/items`` and ``freshrank export catalog`` (runtime/exporter.py): the catalog a
page at a time, each item as the upsert that recreates it, so an exported catalog
imported into a fresh daemon is the same catalog."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import ClientSession

from runtime import cli
from runtime.client import AsyncClient
from runtime.exporter import export_catalog
from runtime.import_sources import jsonl_records
from runtime.importer import import_records
from tests.test_import import daemon, patient

ITEMS = [
    {"item": "i0", "item_features": {"genre": ["war", "drama"], "price": 12.5, "code": "1"}},
    {"item": "i1", "item_features": {"count": 1, "new": True}},
    {"item": "i2"},
    {"user": "ann", "item": "i3", "item_features": {"genre": "comedy"}},
    {"user": "ann", "item": "i0"},
]
AS_UPSERTS = [  # numbers stay numbers (1.0, not "1"), a boolean is its text, as it is learned
    {"item": "i0", "item_features": {"genre": ["war", "drama"], "price": 12.5, "code": "1"}},
    {"item": "i1", "item_features": {"count": 1.0, "new": "true"}},
    {"item": "i2"},
    {"item": "i3", "item_features": {"genre": "comedy"}},
]


async def test_items_come_a_page_at_a_time_as_upserts() -> None:
    async with daemon() as (system, url), AsyncClient(url, timeout_s=600) as client:
        await system.ingest(ITEMS)
        first = await client.items(limit=3)
        assert (first["total"], first["offset"], first["next_offset"]) == (4, 0, 3)
        assert first["items"] == AS_UPSERTS[:3]
        last = await client.items(offset=3, limit=3)
        assert (last["next_offset"], last["items"]) == (None, AS_UPSERTS[3:])
        beyond = await client.items(offset=9)
        assert (beyond["total"], beyond["next_offset"], beyond["items"]) == (4, None, [])


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("offset=-1", "'offset' must be in 0.."),
        ("limit=0", "'limit' must be in 1..10000"),
        ("limit=10001", "'limit' must be in 1..10000"),
        ("limit=ten", "'limit' must be an integer"),
        ("page=2", "unknown query parameter(s) 'page'"),
    ],
)
async def test_a_bad_page_is_a_400_with_the_reason(query: str, reason: str) -> None:
    async with daemon() as (_, url), ClientSession() as session:
        async with session.get(f"{url}/v1/items?{query}") as answer:
            assert answer.status == 400
            assert reason in (await answer.json())["error"]


async def test_an_exported_catalog_imports_into_a_fresh_daemon_as_the_same_catalog(
    tmp_path: Path,
) -> None:
    exported = tmp_path / "catalog.jsonl"
    async with daemon() as (source, url):
        await source.ingest(ITEMS)
        argv = ["export", "catalog", "--url", url, "--output", str(exported), "--page-size", "3"]
        assert await asyncio.to_thread(cli.main, argv) == 0
    assert [json.loads(line) for line in exported.read_text().splitlines()] == AS_UPSERTS
    async with daemon() as (fresh, url):
        summary = await asyncio.to_thread(import_records, jsonl_records(exported), patient(url))
        assert (summary.accepted, summary.rejected) == (4, 0)
        again = tmp_path / "again.jsonl"
        with again.open("w") as out:
            assert await asyncio.to_thread(export_catalog, patient(url), out) == 4
        assert again.read_text() == exported.read_text()
        assert fresh.catalog.ids == ["i0", "i1", "i2", "i3"]


def test_export_from_no_daemon_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    client = ["--url", "http://127.0.0.1:1"]  # port 1: nothing listens there
    assert cli.main(["export", "catalog", *client]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot reach http://127.0.0.1:1" in err
