"""``freshrank import`` (runtime/importer.py): a JSON-lines log into a running daemon
over HTTP, every refusal reported with its line number, the counts on standard output."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from runtime.client import Client
from runtime.config import Config
from runtime.http import make_app
from runtime.importer import import_jsonl
from runtime.system import System

LINES = [
    *(json.dumps({"item": f"i{k}", "item_features": {"genre": ["g"]}}) for k in range(5)),
    "",
    json.dumps({"user": "ann", "item": "i1"}),
    "{not json",
    json.dumps({"user": "bob", "item": "i2", "label": 7}),  # refused by the daemon
    json.dumps({"user": "bob", "item": "i3"}),
]


@pytest.fixture
async def served() -> AsyncIterator[tuple[System, str]]:
    config = Config.from_dict({"state": {"restore": False}, "ingest": {"dead_letter_path": ""}})
    async with System(config) as system:
        server = TestServer(make_app(system), host="127.0.0.1", port=0)
        await server.start_server()
        try:
            yield system, str(server.make_url("")).rstrip("/")
        finally:
            await server.close()


async def test_every_line_is_sent_learned_or_refused_with_its_line(
    served: tuple[System, str], tmp_path: Path
) -> None:
    system, url = served
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join(LINES) + "\n")
    summary = await asyncio.to_thread(import_jsonl, log, Client(url), 3)
    assert (summary.lines, summary.sent, summary.accepted, summary.rejected) == (9, 8, 7, 2)
    assert summary.requests == 3
    assert summary.refusals[0].startswith("line 8: not JSON")
    assert summary.refusals[1].startswith("line 9: ") and "label" in summary.refusals[1]
    assert system.statistics()["trainer"]["events"] == 2
    assert len(system.catalog) == 5


async def test_the_command_prints_the_summary_and_exits_1_when_nothing_is_accepted(
    served: tuple[System, str], tmp_path: Path
) -> None:
    _, url = served
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text("\n".join(LINES) + "\n")
    bad.write_text("u1\ti1\t5\t881250949\n")  # a MovieLens line, not an event

    async def run(path: Path, *extra: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime", "import", str(path), "--url", url, "--no-progress",
            *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, err = await run(good)
    assert code == 0, err
    assert json.loads(out)["accepted"] == 7 and "refused line 8: not JSON" in err
    code, out, err = await run(bad)
    assert code == 1 and json.loads(out)["accepted"] == 0 and "no event was accepted" in err
    code, _, err = await run(good, "--batch-size", "0")
    assert code == 2 and err.strip().endswith("--batch-size must be at least 1, got 0")
    nowhere = url.rsplit(":", 1)[0] + ":1"  # port 1: nothing listens there
    code, _, err = await run(good, "--url", nowhere)
    assert code == 2 and "cannot reach" in err and len(err.strip().splitlines()) == 1
