"""``freshrank``: the daemon (``run``) and log replay (``replay``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from runtime.config import Config, ConfigError
from runtime.replay import FORMATS, open_log, replay


def _load(path: str | None) -> Config:
    return Config.load(path) if path else Config()


def cmd_run(args: argparse.Namespace) -> int:
    from runtime.daemon import run_daemon

    config = _load(args.config)
    if args.simulate:
        config.simulator.enabled = True
    if args.host is not None:
        config.http.host = args.host
    if args.port is not None:
        config.http.port = args.port
    if args.state is not None:
        config.state.snapshot_path = str(Path(args.state) / "snapshot.msgpack")
        config.ingest.dead_letter_path = str(Path(args.state) / "dead_letters.jsonl")
    return run_daemon(config)


async def _replay(args: argparse.Namespace, config: Config) -> dict[str, object]:
    from tqdm import tqdm

    from runtime.system import System

    config.state.restore = False
    async with System(config) as system:
        chunks = open_log(args.path, args.format, config.training.batch_size)
        with tqdm(unit=" ev", unit_scale=True, disable=args.no_progress, file=sys.stderr) as bar:
            return await replay(system, chunks, bar)


def cmd_replay(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if args.shards is not None:
        config.training.shards = args.shards
    if args.batch_size is not None:
        config.training.batch_size = args.batch_size
    config.training.check()
    if not Path(args.path).exists():
        print(f"freshrank replay: {args.path} does not exist", file=sys.stderr)
        return 2
    try:
        import uvloop

        result = uvloop.run(_replay(args, config))
    except ImportError:  # pragma: no cover
        result = asyncio.run(_replay(args, config))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="freshrank", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run the daemon (default: one process, in-memory queues, HTTP on 127.0.0.1:8080)",
    )
    run.add_argument(
        "--config", help="deploy config (TOML); default: the embedded deploy/local.toml settings"
    )
    run.add_argument(
        "--simulate", action="store_true", help="feed the built-in simulator as the event source"
    )
    run.add_argument("--host", help="HTTP bind address (overrides the config)")
    run.add_argument(
        "--port", type=int, help="HTTP port, 0 for any free port (overrides the config)"
    )
    run.add_argument(
        "--state", help="directory for the snapshot and dead letters (overrides the config)"
    )
    run.set_defaults(func=cmd_run)
    rp = sub.add_parser("replay", help="push a log through the pipeline as fast as it goes")
    rp.add_argument("path", help="log file (MovieLens: the ml-100k folder or its u.data)")
    rp.add_argument("--format", required=True, choices=FORMATS)
    rp.add_argument("--config", help="config (TOML)")
    rp.add_argument("--json", help="also write the result object to this file")
    rp.add_argument("--shards", type=int, help="learner shards (overrides the config)")
    rp.add_argument("--batch-size", type=int, help="events per batch (overrides the config)")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    rp.set_defaults(func=cmd_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as error:
        print(f"freshrank: config error: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
