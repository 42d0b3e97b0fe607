"""README.md stays true: its configuration and HTTP references are checked against the code.

The configuration reference has one ``### `[section]``` heading per config section with a
table ``| `key` | `default` | meaning |``; the HTTP reference one ``### `METHOD /path``` heading
per operation of the OpenAPI document, naming every status code that operation answers.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from runtime.config import Config
from runtime.openapi import build_openapi

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIG_HEADING = re.compile(r"^### `\[(\w+)\]`$")
TABLE_ROW = re.compile(r"^\| `(\w+)` \| `(.+?)` \|(.*)\|$")
OPERATION_HEADING = re.compile(r"^### `([A-Z]+) (/\S*)`$")


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


def chapter(text: str, title: str) -> str:
    """The text under ``## title`` up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match is not None, f"README.md has no section '## {title}'"
    return match.group(1)


def subsections(text: str, heading: re.Pattern[str]) -> dict[tuple[str, ...], str]:
    """The body under each ``### `` heading matching ``heading``, keyed by its groups."""
    found: dict[tuple[str, ...], str] = {}
    key: tuple[str, ...] | None = None
    for line in text.splitlines():
        if line.startswith("### "):
            match = heading.match(line)
            key = match.groups() if match else None
            if key is not None:
                assert key not in found, f"README.md documents {key} twice"
                found[key] = ""
        elif key is not None:
            found[key] += line + "\n"
    return found


def documented_config(text: str) -> dict[str, dict[str, str]]:
    """Section -> key -> the default as written in the reference (a TOML value)."""
    reference = chapter(text, "Configuration reference")
    tables: dict[str, dict[str, str]] = {}
    for (section,), body in subsections(reference, CONFIG_HEADING).items():
        rows = [TABLE_ROW.match(line) for line in body.splitlines()]
        tables[section] = {row.group(1): row.group(2) for row in rows if row is not None}
    return tables


def as_toml(value: Any) -> Any:
    """A default as TOML spells it: a table for each named table ([feedback.types.<name>])."""
    if isinstance(value, dict):
        return {key: as_toml(entry) for key, entry in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def config_defaults() -> dict[str, dict[str, Any]]:
    config = Config()
    return {
        section.name: {
            key.name: as_toml(getattr(getattr(config, section.name), key.name))
            for key in dataclasses.fields(getattr(config, section.name))
        }
        for section in dataclasses.fields(config)
    }


def test_readme_documents_every_config_key(readme: str) -> None:
    documented = documented_config(readme)
    expected = config_defaults()
    assert set(documented) == set(expected), "sections of the configuration reference"
    for section, keys in expected.items():
        assert set(documented[section]) == set(keys), f"keys of [{section}] in README.md"


def test_readme_config_defaults_match_the_code(readme: str) -> None:
    documented = documented_config(readme)
    for section, keys in config_defaults().items():
        for key, default in keys.items():
            written = documented.get(section, {}).get(key)
            assert written is not None, f"{section}.{key} is not in README.md"
            value = tomllib.loads(f"value = {written}")["value"]
            assert (type(value), value) == (type(default), default), f"{section}.{key}"


def test_readme_documents_every_http_operation_and_status(readme: str) -> None:
    api = chapter(readme, "HTTP API")
    documented = subsections(api, OPERATION_HEADING)
    spec = build_openapi(Config())
    operations = {
        (method.upper(), path): operation
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
    }
    assert set(documented) == set(operations), "operations of the HTTP reference"
    for key, operation in operations.items():
        for status in operation["responses"]:
            assert re.search(rf"\b{status}\b", documented[key]), f"{key}: status {status}"


def test_readme_table_of_contents_lists_every_section(readme: str) -> None:
    contents = chapter(readme, "Contents")
    titles = re.findall(r"^## (.+)$", readme, re.MULTILINE)
    listed = re.findall(r"^\* \[(.+?)\]\(#(.+?)\)$", contents, re.MULTILINE)
    expected = [title for title in titles if title != "Contents"]
    assert [title for title, _ in listed] == expected
    for title, anchor in listed:
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        assert anchor == slug, f"anchor of {title!r}"


def test_readme_starts_with_the_two_setup_commands(readme: str) -> None:
    """The first commands a new user sees install and run the daemon, then the tests."""
    commands = re.findall(r"^    (python3 -m venv .+)$", readme, re.MULTILINE)[:2]
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/freshrank run",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest",
    ]
    assert readme.index(commands[1]) < readme.index("## ")
    assert commands[1].split(" && ", 1)[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
