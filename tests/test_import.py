"""``freshrank import`` (runtime/importer.py): a JSON-lines, CSV or MovieLens log into a
running daemon over HTTP, every refusal reported with its line number, the counts on
standard output; a journal exported by ``freshrank journal export`` imports whole."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from runtime import cli
from runtime.client import Client
from runtime.config import Config
from runtime.import_sources import csv_records, jsonl_records, movielens_records
from runtime.importer import ImportSummary, import_jsonl, import_records
from runtime.system import System
from tests.conftest import data_path, served_system

LINES = [
    *(json.dumps({"item": f"i{k}", "item_features": {"genre": ["g"]}}) for k in range(5)),
    "",
    json.dumps({"user": "ann", "item": "i1"}),
    "{not json",
    json.dumps({"user": "bob", "item": "i2", "label": 7}),  # refused by the daemon
    json.dumps({"user": "bob", "item": "i3"}),
]
TWICE = '{"user": "bob", "item": "i4", "item": "i5"}'  # one of the items would be lost


def daemon() -> AbstractAsyncContextManager[tuple[System, str]]:
    """A fresh System serving its HTTP API on a loopback port: (system, base URL)."""
    return served_system()


def patient(url: str) -> Client:
    """A client that outwaits a cold numba cache: the first batch compiles the kernels
    (over 30 s on 2 busy cores), and a timed-out ingest sent again is learned twice."""
    return Client(url, timeout_s=600)


@pytest.fixture
async def served() -> AsyncIterator[tuple[System, str]]:
    async with daemon() as running:
        yield running


async def test_every_line_is_sent_learned_or_refused_with_its_line(
    served: tuple[System, str], tmp_path: Path
) -> None:
    system, url = served
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join([*LINES, TWICE]) + "\n")
    summary = await asyncio.to_thread(import_jsonl, log, patient(url), 3)
    assert (summary.lines, summary.sent, summary.accepted, summary.rejected) == (10, 8, 7, 3)
    assert summary.requests == 3
    assert summary.refusals[0].startswith("line 8: not JSON")
    assert summary.refusals[1] == "line 11: duplicate key 'item'"  # refused before sending
    assert summary.refusals[2].startswith("line 9: ") and "label" in summary.refusals[2]
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


CSV = """user,item,label,ts,weight,item_features.genre:list,item_features.price:number,user_features.age
,i1,,,,war|drama,12.5,
,i2,,,,comedy,,
ann,i1,1,1700000000,2,,,25-34
bob,i2,yes,,,,,
bob,i2,7,,,,,
bob,i2
"carl",i2,0,,,,,
"""


async def imported(url: str, records: object, batch_size: int = 1000) -> ImportSummary:
    return await asyncio.to_thread(import_records, records, patient(url), batch_size)


async def test_csv_columns_map_to_event_fields_and_bad_rows_are_refused_with_their_line(
    served: tuple[System, str], tmp_path: Path
) -> None:
    system, url = served
    log = tmp_path / "events.csv"
    log.write_text(CSV)
    summary = await imported(url, csv_records(log), 3)
    assert (summary.lines, summary.sent, summary.accepted, summary.rejected) == (7, 5, 4, 3)
    assert summary.refusals[0] == "line 5: column 'label': not a number: 'yes'"
    assert summary.refusals[1] == "line 7: 2 fields, the header has 8"
    assert (
        summary.refusals[2].startswith("line 6: ")
        and "'label' must be 0 or 1" in summary.refusals[2]
    )
    assert system.statistics()["trainer"]["events"] == 2
    features = {f["feature"]: f["value"] for f in (await system.inspect("i1"))["features"]}
    assert {"i.genre=war": 1.0, "i.genre=drama": 1.0}.items() <= features.items()
    assert features.get("i.price=12.5", features.get("i.price")) == 12.5


def test_a_csv_column_that_is_no_event_field_is_one_line_naming_the_mapping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "events.csv"
    log.write_text("user,item,price\nann,i1,3\n")
    nowhere = "http://127.0.0.1:1"  # the header is checked before anything is sent
    assert cli.main(["import", str(log), "--format", "csv", "--url", nowhere]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "column 'price' is not an event field" in err
    assert "item_features.NAME" in err


def write_movielens(folder: Path) -> None:
    folder.mkdir()
    genres = "|".join("1" if g in (5, 17) else "0" for g in range(19))
    (folder / "u.item").write_text(
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{genres}\n"
        "broken\n"
        f"2|GoldenEye (1995)|01-Jan-1995||http://x|{genres}\n",
        encoding="latin-1",
    )
    (folder / "u.user").write_text("7|24|M|technician|85711\n8|53|F|other|94043\n")
    (folder / "u.data").write_text(
        "7\t1\t5\t881250949\n8\t2\t3\t881250900\n7\tx\t3\t1\n8\t1\t4\t881250999\n"
    )


async def test_movielens_sends_the_catalog_then_the_ratings_in_time_order(
    served: tuple[System, str], tmp_path: Path
) -> None:
    system, url = served
    write_movielens(tmp_path / "ml")
    records = list(movielens_records(tmp_path / "ml"))
    assert [where for where, _ in records] == [
        "u.item line 2", "u.data line 3",  # the unreadable lines first, with their reasons
        "u.item line 1", "u.item line 3", "u.data line 2", "u.data line 1", "u.data line 4",
    ]  # fmt: skip
    assert records[4][1] == {
        "item": "2", "user": "8", "ts": 881250900.0,
        "user_features": {"age": "45-54", "gender": "F", "occupation": "other"},
    }  # fmt: skip
    assert records[2][1]["item_features"] == {"genre": ["Comedy", "War"], "year": "1995"}
    summary = await imported(url, iter(records))
    assert (summary.lines, summary.sent, summary.accepted, summary.rejected) == (7, 5, 5, 2)
    assert summary.refusals[1].startswith("u.data line 3: expected 4 tab-separated integers")
    assert system.statistics()["trainer"]["events"] == 3 and len(system.catalog) == 2


async def test_the_movielens_100k_folder_imports_whole(served: tuple[System, str]) -> None:
    system, url = served
    folder = data_path("ml-100k")
    summary = await imported(url, movielens_records(folder), 5000)
    assert (summary.sent, summary.accepted, summary.rejected) == (101_682, 101_682, 0)
    assert system.statistics()["trainer"]["events"] == 100_000
    assert len(system.catalog) == 1_682


async def test_an_exported_journal_imports_into_a_fresh_daemon_as_the_same_events(
    served: tuple[System, str], tmp_path: Path
) -> None:
    fresh, url = served
    state = tmp_path / "state"
    config = Config.from_dict({"state": {"dir": str(state)}, "ingest": {"dead_letter_path": ""}})
    events = [json.loads(line) for line in LINES if line.startswith('{"')]
    events = [event for event in events if event.get("label") != 7]
    async with System(config) as source:
        await source.ingest(events)
        learned = source.statistics()["trainer"]["events"]
    exported = tmp_path / "events.jsonl"
    argv = ["journal", "export", "--state", str(state), "--output", str(exported)]
    assert await asyncio.to_thread(cli.main, argv) == 0
    summary = await imported(url, jsonl_records(exported))
    assert (summary.sent, summary.accepted, summary.rejected) == (len(events), len(events), 0)
    assert fresh.statistics()["trainer"]["events"] == learned == 2
    assert len(fresh.catalog) == 5
