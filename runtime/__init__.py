"""freshrank's actor runtime: actor base, transport, codec, config, system, daemon, CLI, HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.config import Config
    from runtime.system import IngestResult, System, SystemFailed

__all__ = ["Config", "IngestResult", "System", "SystemFailed"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import runtime.codec` does not pull in every actor (actors import runtime).
    if name in ("System", "IngestResult", "SystemFailed"):
        from runtime import system

        return getattr(system, name)
    if name == "Config":
        from runtime.config import Config

        return Config
    raise AttributeError(name)
