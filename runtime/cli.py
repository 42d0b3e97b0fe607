"""The ``freshrank`` command: the daemon, log replay, the cluster roles and tuning."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from runtime.config import Config, ConfigError
from runtime.errors import BadInput, FreshrankError
from runtime.exporter import add_export_parser
from runtime.importer import add_import_parser
from runtime.replay import FORMATS, open_log, replay
from runtime.state_verify import add_state_parser
from runtime.tune import add_tune_parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("freshrank")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


DESCRIPTION = (
    "freshrank: a real-time recommender that learns from every event. "
    "'freshrank COMMAND --help' describes each command."
)


class UsageError(BadInput):
    """A command line that cannot work with the config it names (one line, exit 2)."""


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, when it has a default worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS
        if "default" in text or unset or (isinstance(default, list) and not default):
            return text
        shown = f"{default:.4g}" if isinstance(default, float) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommands (made with its class) show their defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: ids start at 0")
    return value


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0..65535 (0: any free port)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 0..65535 (0: any free port)")
    return port


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
    if args.log_json:
        config.http.log_format = "json"
    if args.state is not None:
        config.state.dir = args.state
        config.ingest.dead_letter_path = str(Path(args.state) / "dead_letters.jsonl")
    return run_daemon(config)


def cmd_journal_export(args: argparse.Namespace) -> int:
    from runtime.journal import export_jsonl

    config = _load(args.config)
    state = args.state if args.state is not None else config.state.dir
    if not state:
        print("freshrank journal export: no state directory (--state DIR or state.dir)",
              file=sys.stderr)  # fmt: skip
        return 2
    directory = Path(state) / "journal"
    if not directory.is_dir():
        print(f"freshrank journal export: {directory} does not exist", file=sys.stderr)
        return 2
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            count = export_jsonl(directory, out)
    else:
        count = export_jsonl(directory, sys.stdout)
    print(f"freshrank journal export: {count} events", file=sys.stderr)
    return 0


async def _replay(args: argparse.Namespace, config: Config) -> dict[str, object]:
    from tqdm import tqdm

    from runtime.system import System

    config.state.restore = False
    async with System(config) as system:
        chunks = open_log(args.path, args.format, config.training.batch_size, config.feedback)
        with tqdm(unit=" ev", unit_scale=True, disable=args.no_progress, file=sys.stderr) as bar:
            return await replay(system, chunks, bar)


def cmd_replay(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if args.shards is not None:
        config.training.shards = args.shards
    if args.batch_size is not None:
        config.training.batch_size = args.batch_size
    if args.exact_rankings:
        config.training.exact_rankings = True
    config.training.check()
    if not Path(args.path).exists():
        print(f"freshrank replay: {args.path} does not exist", file=sys.stderr)
        return 2
    result = _run(_replay_cluster(args, config) if args.cluster else _replay(args, config))
    if not result.get("events") and not result.get("rejected"):
        raise UsageError(
            f"{args.path} held no events readable as --format {args.format}: is it empty, "
            f"or another format ({', '.join(FORMATS)})?"
        )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    if not result.get("events") and result.get("rejected"):
        print(
            f"freshrank replay: every one of the {result['rejected']} records was rejected "
            f"(see the dead letters); is --format {args.format} the file's format?",
            file=sys.stderr,
        )
        return 1
    return 0


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def cmd_role(args: argparse.Namespace) -> int:
    from runtime import cluster

    config = _load(args.config)
    if config.experiments.variants:
        raise ConfigError(
            "[experiments] runs in one process only (freshrank run, the embedded System): "
            "cluster roles do not build variants; remove the section for cluster mode"
        )
    shards = config.training.shards
    if args.command == "shard" and args.id >= shards:
        where = args.config or "the default config"
        raise UsageError(
            f"shard --id {args.id} is outside 0..{shards - 1} (training.shards = {shards} in "
            f"{where}): give --id 0..{shards - 1}, or the config of the cluster it belongs to"
        )
    _logging()
    if args.command == "shard":
        return int(_run(cluster.run_shard(config, args.id)))
    if args.command == "trainer":
        return int(_run(cluster.run_trainer(config, args.id)))
    if args.port is not None:
        config.http.port = args.port
    elif config.http.port:
        config.http.port += args.id  # several rankers on one host: consecutive ports
    return int(_run(cluster.run_ranker(config, args.id)))


def cmd_launch(args: argparse.Namespace) -> int:
    from runtime.launch import ClusterPlan, run_launch

    config = Config.load(args.config)
    plan = ClusterPlan(config.training.shards, config.cluster.trainers, config.cluster.rankers)
    # the stdlib loop: uvloop's subprocess_exec has no process_group (own group per child)
    return int(asyncio.run(run_launch(args.config, plan)))


async def _replay_cluster(args: argparse.Namespace, config: Config) -> dict[str, object]:
    from runtime.cluster import publish_log
    from runtime.kafka import wait_until_consumed

    chunks = open_log(args.path, args.format, config.training.batch_size, config.feedback)
    started = time.perf_counter()
    result: dict[str, object] = await publish_log(config, chunks)
    if args.wait:
        group = f"{config.kafka.topic_prefix}-trainers"
        await wait_until_consumed(config, group, "events", config.kafka.events_partitions)
        result["learned_seconds"] = round(time.perf_counter() - started, 4)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="freshrank", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"freshrank {_version()}")
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
        "--port", type=port_number, help="HTTP port, 0 for any free port (overrides the config)"
    )
    run.add_argument(
        "--state",
        help="directory for the journal, snapshots and dead letters (state.dir; overrides "
        "the config)",
    )
    run.add_argument(
        "--log-json", action="store_true", help="JSON-lines logs (same as http.log_format = json)"
    )
    run.set_defaults(func=cmd_run)
    rp = sub.add_parser("replay", help="push a log through the pipeline as fast as it goes")
    rp.add_argument("path", help="log file (MovieLens: the ml-100k folder or its u.data)")
    rp.add_argument("--format", required=True, choices=FORMATS)
    rp.add_argument("--config", help="config (TOML)")
    rp.add_argument("--json", help="also write the result object to this file")
    rp.add_argument("--shards", type=int, help="learner shards (overrides the config)")
    rp.add_argument("--batch-size", type=int, help="events per batch (overrides the config)")
    rp.add_argument(
        "--exact-rankings",
        action="store_true",
        help="a ranked event starts a new batch: HR@k and NDCG@k do not depend on the batch"
        " size (training.exact_rankings; slower)",
    )
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    rp.add_argument(
        "--cluster", action="store_true", help="publish to the config's Kafka topics instead"
    )
    rp.add_argument(
        "--wait", action="store_true", help="with --cluster: wait until the trainers learned it"
    )
    rp.set_defaults(func=cmd_replay)
    _add_role_parsers(sub)
    launch = sub.add_parser("launch", help="start and supervise every process of a deploy config")
    launch.add_argument("config", help="deploy config, e.g. deploy/cluster.toml")
    launch.set_defaults(func=cmd_launch)
    _add_broker_parser(sub)
    _add_journal_parser(sub)
    add_state_parser(sub)
    add_import_parser(sub)
    add_export_parser(sub)
    add_tune_parser(sub)
    return parser


def _add_role_parsers(sub: Any) -> None:
    """The cluster roles: shard, trainer and ranker (one process each)."""
    for role, text in (
        ("shard", "a learner shard (cluster mode): owns index %% shards == ID"),
        ("trainer", "a trainer in the events consumer group (cluster mode)"),
        ("ranker", "a ranker serving the HTTP API from replicas (cluster mode)"),
    ):
        p = sub.add_parser(role, help=text)
        p.add_argument(
            "--id",
            type=_non_negative,
            default=0,
            required=role == "shard",
            help="this process's index",
        )
        p.add_argument("--config", help="deploy config (TOML)")
        if role == "ranker":
            p.add_argument("--port", type=port_number, help="HTTP port (default: http.port + id)")
        p.set_defaults(func=cmd_role)


def cmd_broker(args: argparse.Namespace) -> int:
    from runtime.broker import run_broker

    return run_broker(args.port)


def _add_broker_parser(sub: Any) -> None:
    broker = sub.add_parser(
        "broker",
        help="a Kafka-protocol broker for development (in memory, on loopback) until Ctrl-C",
    )
    broker.add_argument(
        "--port", type=port_number, default=9092, help="its port on 127.0.0.1, 0 for a free one"
    )
    broker.set_defaults(func=cmd_broker)


def _add_journal_parser(sub: Any) -> None:
    journal = sub.add_parser("journal", help="the event journal of a state directory")
    journal_sub = journal.add_subparsers(dest="journal_command", required=True)
    export = journal_sub.add_parser("export", help="write the journal's events as JSON lines")
    export.add_argument("--state", help="state directory (default: the config's state.dir)")
    export.add_argument("--config", help="config (TOML)")
    export.add_argument("--output", help="file to write (default: standard output)")
    export.set_defaults(func=cmd_journal_export)


def report_error(error: FreshrankError) -> int:
    """Tell the user about an error that ended a command; its exit code.

    A mistake in the input or the setup is one line (the message names what to fix);
    a crash is its traceback, as Python would print it.
    """
    if error.traceback:
        traceback.print_exception(error, file=sys.stderr)
    else:
        print(error.cli_message(), file=sys.stderr)
    return error.exit_code


def _usage_parsers(parser: argparse.ArgumentParser) -> None:
    """Each subcommand records its own parser, so an unknown option is reported with the
    usage of the command it was given to, not the top-level one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.set_defaults(usage_parser=sub)
                _usage_parsers(sub)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    _usage_parsers(parser)
    args, extra = parser.parse_known_args(argv)
    if extra:
        getattr(args, "usage_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        code: int = args.func(args)
    except FreshrankError as error:
        return report_error(error)
    return code


if __name__ == "__main__":
    sys.exit(main())
