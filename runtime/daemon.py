"""The daemon: the System plus the HTTP API, until SIGTERM/SIGINT.

On a signal it stops taking requests, drains every queue (nothing accepted is
lost), writes a state snapshot atomically and exits 0; the next start restores
the snapshot, so a restarted daemon keeps what it learned.  With ``state.dir``
(``--state DIR``) every accepted request is journaled before it is answered and
snapshots are periodic, so even a ``kill -9`` loses nothing acknowledged
(runtime/durability.py).  An actor crash exits 1 with the cause logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from aiohttp import web

from runtime.config import Config
from runtime.http import make_app
from runtime.http_middleware import check_exposure, start_site
from runtime.logs import configure_logging
from runtime.system import System, SystemFailed
from runtime.warmup import warm_up

log = logging.getLogger("freshrank")


async def serve(config: Config) -> int:
    """Run until a signal (exit code 0) or an actor crash (exit code 1).

    Refuses (ConfigError) to serve a non-loopback address without a token, before
    anything starts.
    """
    check_exposure(config.http, os.environ)
    await warm_up(config)
    system = System(config)
    await system.start()
    app = make_app(system)
    if config.http.enabled:
        runner = await start_site(app, config.http)
    else:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    address = ""
    if config.http.enabled and runner.addresses:
        host, port = runner.addresses[0][:2]
        address = f" http://{host}:{port}"
    print(f"freshrank ready{address} shards={config.training.shards}", flush=True)
    stopping = asyncio.ensure_future(stop.wait())
    failing = asyncio.ensure_future(system.wait_failed())
    await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
    for task in (stopping, failing):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await runner.cleanup()
    if (
        failing.done()
        and not failing.cancelled()
        and failing.exception() is None
        and not stop.is_set()
    ):
        log.error("an actor crashed, exiting: %r", failing.result())
        await system.stop(drain=False)
        return SystemFailed.exit_code
    await system.stop(drain=True)  # with state.dir: its final snapshot is written here
    if config.state.snapshot_path and not config.state.dir:
        path = system.write_snapshot()
        log.info("snapshot written to %s", path)
    print("freshrank stopped cleanly", flush=True)
    return 0


def run_daemon(config: Config) -> int:
    """Run :func:`serve` on uvloop (when available)."""
    token = check_exposure(config.http, os.environ)
    configure_logging(config.http.log_format, secrets=[token])
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(serve(config))
    return uvloop.run(serve(config))
