"""Layout rules of actors/ and runtime/ that a reviewer would otherwise check by hand."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("actors", "runtime")
MAX_FUNCTION_LINES = 60


def functions(path: Path) -> Iterator[tuple[str, int]]:
    """Every function and method of a file (nested ones too), with its length in lines
    from ``def`` to its last line (decorators not counted)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            yield f"{node.name} (line {node.lineno})", node.end_lineno - node.lineno + 1


def test_function_lengths_are_measured_from_def_to_last_line(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    body = "\n".join(f"    x{n} = {n}" for n in range(61))
    source.write_text(
        f"@decorated\ndef long() -> None:\n{body}\n\n\ndef short() -> None:\n    pass\n"
    )
    assert dict(functions(source)) == {"long (line 2)": 62, "short (line 66)": 2}


def test_no_function_is_over_60_lines() -> None:
    files = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 30  # the walk found the packages
    too_long = [
        f"{path.relative_to(ROOT)}: {name} has {lines} lines"
        for path in files
        for name, lines in functions(path)
        if lines > MAX_FUNCTION_LINES
    ]
    assert not too_long, "\n".join(too_long)


MAX_SYSTEM_LINES = 250


def test_system_keeps_only_the_front_and_lifecycle() -> None:
    """Ingest, recommend, statistics and lifecycle; saved state, queueing, labels and the
    simulator live in their own modules, so System stays near 200 lines."""
    path = ROOT / "runtime" / "system.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    (system,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "System"]
    assert system.end_lineno is not None
    lines = system.end_lineno - system.lineno + 1
    assert lines <= MAX_SYSTEM_LINES, f"System has {lines} lines (at most {MAX_SYSTEM_LINES})"
