"""``freshrank export catalog``: a running daemon's catalog as JSON lines, over HTTP.

It pages through ``GET /v1/items`` with :class:`runtime.client.Client` and writes one
item per line, as the item upsert that recreates it, so ``freshrank import`` of the
file rebuilds the catalog in another daemon.  A daemon serves from memory what it has
learned: this works against a live embedded daemon and a cluster ranker alike, with no
access to their state directories.  The events themselves are exported from a state
directory by ``freshrank journal export``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from runtime.client import Client
from runtime.errors import BadInput
from runtime.front import ITEMS_PAGE_MAX
from runtime.importer import UNREACHABLE


def export_catalog(client: Client, out: TextIO, page_size: int = 1000) -> int:
    """Write every item of the catalog to ``out``; how many.  Items that join while it
    pages are written too (they join at the end)."""
    offset: int | None = 0
    count = 0
    while offset is not None:
        page = client.items(offset, page_size)
        for item in page["items"]:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
        count += len(page["items"])
        offset = page["next_offset"]
    return count


def cmd_export_catalog(args: argparse.Namespace) -> int:
    if not 1 <= args.page_size <= ITEMS_PAGE_MAX:
        raise BadInput(f"--page-size must be in 1..{ITEMS_PAGE_MAX}, got {args.page_size}")
    token = args.token or os.environ.get("FRESHRANK_TOKEN") or None
    client = Client(args.url, token=token)
    try:
        if args.output:
            with Path(args.output).open("w", encoding="utf-8") as out:
                count = export_catalog(client, out, args.page_size)
        else:
            count = export_catalog(client, sys.stdout, args.page_size)
    except UNREACHABLE as error:  # after the client's retries
        raise BadInput(f"cannot reach {args.url}: {error}; is the daemon running?") from None
    except OSError as error:
        raise BadInput(f"cannot write {args.output}: {error}") from None
    print(f"freshrank export catalog: {count} items", file=sys.stderr)
    return 0


def add_export_parser(sub: Any) -> None:
    export = sub.add_parser("export", help="what a running daemon holds, as JSON lines")
    export_sub = export.add_subparsers(dest="export_command", required=True)
    catalog = export_sub.add_parser(
        "catalog",
        help="every catalog item as the item upsert that recreates it (GET /v1/items); "
        "freshrank import reads the file back",
    )
    catalog.add_argument("--url", default="http://127.0.0.1:8080", help="the daemon")
    catalog.add_argument("--token", help="bearer token (default: $FRESHRANK_TOKEN)")
    catalog.add_argument("--output", help="file to write (default: standard output)")
    catalog.add_argument("--page-size", type=int, default=1000, help="items per request")
    catalog.set_defaults(func=cmd_export_catalog)
