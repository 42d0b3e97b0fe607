"""The root of freshrank's errors (placeholder; the full tree lands with the errors branch)."""

from __future__ import annotations


class FreshrankError(Exception):
    """Every error freshrank raises on purpose; policy as class attributes."""

    http_status = 500
    exit_code = 1
