from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtime.config import Config, ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_default_is_deploy_local_toml() -> None:
    assert Config.load(ROOT / "deploy" / "local.toml") == Config()


def test_simulate_deploy_config_loads() -> None:
    config = Config.load(ROOT / "deploy" / "simulate.toml")
    assert config.simulator.enabled and config.simulator.rate == 500.0


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"training": {"shards": 0}}, "training.shards"),
        ({"training": {"shardz": 2}}, "unknown key training.shardz"),
        ({"trainig": {}}, "unknown section [trainig]"),
        ({"ftrl": {"alpha": -1}}, "ftrl.alpha"),
        ({"ftrl": {"alpha": "fast"}}, "ftrl.alpha must be float"),
        ({"model": {"bits": 40}}, "model.bits"),
        ({"model": {"crosses": [["user"]]}}, "model.crosses"),
        ({"http": {"port": 70000}}, "http.port"),
        ({"http": {"dashboard_sample_s": 0.0}}, "http.dashboard_sample_s"),
        ({"http": {"dashboard_sample_s": 10.0, "dashboard_history_s": 5.0}}, "dashboard_sample_s"),
        ({"http": {"dashboard_history_s": 1e9}}, "http.dashboard_history_s"),
        ({"training": {"sync": "yes"}}, "training.sync must be bool"),
        ({"training": "x"}, "[training] must be a table"),
    ],
)
def test_bad_values_name_the_key(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    assert needle in str(info.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\nshards = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.load(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "missing.toml")


def test_cli_reports_config_errors_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nshards = -3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "runtime", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "training.shards" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_kubernetes_configmap_holds_a_valid_config() -> None:
    """The cluster.toml block of the k8s ConfigMap loads, and its public bind has a token."""
    import textwrap
    import tomllib

    text = (ROOT / "deploy" / "k8s" / "configmap.yaml").read_text()
    block = text.split("cluster.toml: |\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    config = Config.from_dict(tomllib.loads(textwrap.dedent("\n".join(lines))))
    assert config.http.host == "0.0.0.0"
    assert config.http.token == "env:FRESHRANK_TOKEN"
