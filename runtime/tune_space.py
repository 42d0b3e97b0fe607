"""The search space of ``freshrank tune``: ``section.key -> [candidates]``.

The default candidates, a space file (TOML or JSON), ``--set`` items, the check of the
keys against the Config, and applying or reading one setting of a config dict.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from runtime.bodies import loads
from runtime.config import Config, ConfigError, ModelConfig

Space = dict[str, list[Any]]
Settings = dict[str, Any]

# demographic x genre crosses: namespaces absent from a log simply yield no features
GENRE_CROSSES = [["user", "i.genre"], ["u.age", "i.genre"], ["u.gender", "i.genre"]]
GENRE_CROSSES += [["u.occupation", "i.genre"], ["c.device", "i.genre"]]


def default_space(base: Config) -> Space:
    """The default candidates per key; ``model.factors`` only when the model has factors."""
    space: Space = {
        "ftrl.alpha": [0.02, 0.05, 0.1, 0.2, 0.3, 0.5],
        "ftrl.beta": [0.1, 0.5, 1.0, 2.0],
        "ftrl.l1": [0.0, 0.01, 0.1, 0.5],
        "ftrl.l2": [0.0, 0.01, 0.1, 1.0],
        "model.bits": [18, 20, 22],
    }
    if "factors" in {f.name for f in fields(ModelConfig)}:
        space["model.factors"] = [0, 4, 8, 16]
    space["model.crosses"] = _unique([base.model.crosses, [], [["user", "i.genre"]], GENRE_CROSSES])
    space["training.negatives"] = [2, 4, 8, 16]
    if base.sequence.enabled:  # the signals' settings (window >= the default Markov order)
        space["sequence.window"] = [10, 20, 30]
        space["sequence.half_life"] = [1.0, 3.0, 10.0]
        space["sequence.markov_decay"] = [0.5, 0.8, 0.9]
        space["sequence.hard_negatives"] = [0, 2]
    return space


def _unique(values: list[Any]) -> list[Any]:
    kept: list[Any] = []
    for value in values:
        if value not in kept:
            kept.append(value)
    return kept


def load_space(path: str | Path) -> Space:
    """A space file: TOML (``[ftrl] alpha = [0.05, 0.1]``) or JSON (``{"ftrl.alpha": [..]}``).

    Nested tables and dotted keys are the same thing; every leaf is a list of candidates.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"search space {path}: {error.strerror or error}") from None
    try:
        data = loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ConfigError(f"search space {path}: not valid {kind}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"search space {path}: must be a table of key = [candidates]")
    return _flatten(data, "", str(path))


def _flatten(table: dict[str, Any], prefix: str, origin: str) -> Space:
    space: Space = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            space.update(_flatten(value, f"{key}.", origin))
        elif isinstance(value, list):
            space[key] = value
        else:
            raise ConfigError(
                f"search space {origin}: {key} must be a list of candidates, got {value!r}"
            )
    return space


def parse_set(item: str) -> tuple[str, list[Any]]:
    """``key=v1,v2,...`` (each value a TOML value, else a bare string) or ``key=[...]`` (a
    TOML array of candidates, for list values: ``model.crosses=[[], [["user","i.genre"]]]``)."""
    key, sep, text = item.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or not key or not text:
        raise ConfigError(f"--set {item!r}: expected key=v1,v2,... (e.g. ftrl.alpha=0.05,0.1)")
    if text.startswith("["):
        values = _toml_value(text)
        if not isinstance(values, list):
            raise ConfigError(f"--set {item!r}: not a TOML array of candidates")
        return key, values
    return key, [_scalar(part.strip()) for part in text.split(",")]


def _toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return None


def _scalar(text: str) -> Any:
    value = _toml_value(text)
    return text if value is None else value


def build_space(
    base: Config, space_file: str | None, overrides: Sequence[str], defaults: bool = True
) -> Space:
    """The defaults (unless not ``defaults``), then the space file and ``--set`` per key."""
    space = default_space(base) if defaults else {}
    if space_file:
        space.update(load_space(space_file))
    for item in overrides:
        key, values = parse_set(item)
        space[key] = values
    check_space_keys(space, base)
    return space


def check_space_keys(space: Space, base: Config) -> None:
    """A key the Config does not know fails the tune up front with Config's own error
    (rather than failing every trial); bad *values* are failed trials."""
    known = base.to_dict()
    for key, values in space.items():
        section, _, name = key.partition(".")
        if not name:
            raise ConfigError(f"search space key {key!r} must be section.key, e.g. ftrl.alpha")
        if not values:
            raise ConfigError(f"search space key {key} has no candidates")
        if not isinstance(known.get(section), dict) or name not in known[section]:
            Config.from_dict({section: {name: values[0]}}, origin="search space")


def apply_settings(base: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A copy of a config dict with ``section.key`` values replaced."""
    data = copy.deepcopy(base)
    for key, value in settings.items():
        section, _, name = key.partition(".")
        table = data.setdefault(section, {})
        if isinstance(table, dict):
            table[name] = copy.deepcopy(value)
    return data


def lookup_setting(data: dict[str, Any], key: str) -> Any:
    """The value of ``section.key`` in a config dict (None when absent)."""
    section, _, name = key.partition(".")
    table = data.get(section)
    return table.get(name) if isinstance(table, dict) else None
