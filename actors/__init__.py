"""The pure numeric parts of freshrank (numpy and numba, no asyncio).

numba checks a cached compiled kernel against its own source file only, so a kernel
that calls a kernel of another module (the signal walk calls the item statistics'
scoring, for one) went on running the old callee from its cache after that module
changed.  Unless ``NUMBA_CACHE_DIR`` is set, the cache therefore lives in a directory
named by a digest of every module of this package (under ``$XDG_CACHE_HOME`` or
``~/.cache``, ``freshrank/numba/<digest>``): any change to any of them compiles afresh.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def kernel_cache_dir() -> Path:
    """numba's cache directory for the package's sources as they are now."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "freshrank" / "numba" / digest.hexdigest()[:16]


os.environ.setdefault("NUMBA_CACHE_DIR", str(kernel_cache_dir()))
