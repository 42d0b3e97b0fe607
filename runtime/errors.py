"""One tree for the errors freshrank raises on purpose, with their policy as class attributes.

The root is :class:`FreshrankError`; every error class of ``actors/`` and ``runtime/``
derives from it through one of the four families below, and keeps a builtin base
(``ValueError``, ``RuntimeError``) where callers catch that.  What an error means to
the outside is decided by its class, in one place, instead of by ``except`` lists:

* ``http_status``: the HTTP answer when it escapes a request handler
  (runtime/http_middleware.py renders it);
* ``public``: whether its message may be shown to an HTTP client (else the client
  gets "internal error" with the request id, and the log gets the traceback);
* ``exit_code`` and ``traceback``: what ``freshrank`` exits with when it escapes a
  command, and whether the traceback is worth printing (a crash) or one line says it
  all (a mistake in the input or the setup), runtime/cli.py.

=================  ===========  ======  =========  =========
family             http_status  public  exit_code  traceback
=================  ===========  ======  =========  =========
FreshrankError     500          no      1          yes
BadInput           400          yes     2          no
SetupError         500          no      2          no
Unavailable        503          yes     1          yes
=================  ===========  ======  =========  =========

This module imports nothing of freshrank, so every module can import it.
"""

from __future__ import annotations

__all__ = ["BadInput", "BadRequest", "FreshrankError", "SetupError", "Unavailable"]


class FreshrankError(Exception):
    """The root: an unexpected failure unless a subclass says otherwise (500, exit 1)."""

    http_status: int = 500
    public: bool = False
    exit_code: int = 1
    traceback: bool = True
    cli_label: str = ""
    """Prefix of the CLI's one-line message (``config error: ...``)."""

    def cli_message(self) -> str:
        label = f"{self.cli_label}: " if self.cli_label else ""
        return f"freshrank: {label}{self}"


class BadInput(FreshrankError):
    """Input that cannot be used (an event, a request parameter, a payload); the message
    says why, so the client sees it."""

    http_status = 400
    public = True
    exit_code = 2
    traceback = False


class BadRequest(BadInput, ValueError):
    """A request the HTTP layer refuses before it reaches the model (bad parameter or body)."""


class SetupError(FreshrankError):
    """A configuration or environment the process cannot run with: the operator's to fix,
    not a client's, so a request that meets one gets a plain 500."""

    http_status = 500
    public = False
    exit_code = 2
    traceback = False


class Unavailable(FreshrankError):
    """The service cannot answer now (an actor crashed); the reason is shown, 503 tells a
    monitor the server is down rather than the request wrong."""

    http_status = 503
    public = True
    exit_code = 1
    traceback = True
