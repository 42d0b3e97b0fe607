"""Shared fixtures: paths to the real data sets (never copied into the project)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def data_path(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data set not available: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture
def ml100k() -> Path:
    return data_path("ml-100k")


@pytest.fixture
def criteo_train() -> Path:
    return data_path("criteo-sample", "train.csv")
