"""What `python -m worker` says when this Python lacks what the worker needs.

The standard library only: `worker.__main__` imports this before any third-party module, so
that `python3 -m worker ...` run outside the virtual environment ends in one line saying how
to run the installed command, not in a `ModuleNotFoundError` traceback.
"""

from __future__ import annotations

import shlex
import sys
from typing import NoReturn

EXIT_USAGE = 2


def is_ours(exc: ModuleNotFoundError) -> bool:
    """True when the missing module is one of the worker's own (a bug, not an environment)."""
    return (exc.name or "worker").partition(".")[0] == "worker"


def missing_line(exc: ModuleNotFoundError, argv: list[str]) -> str:
    """The one line for a third-party module this Python cannot import."""
    args = shlex.join(argv[1:]) or "--help"
    return (
        f"signal-worker: this Python ({sys.executable}) has no module {exc.name!r}, which "
        "signal-worker needs: run the installed command from the checkout, "
        f"`.venv/bin/signal-worker {args}` (`make run-venv` installs it), or `make run`"
    )


def exit_missing(exc: ModuleNotFoundError) -> NoReturn:
    """Re-raise `exc` when the module is the worker's own; else say so in one line and exit 2."""
    if is_ours(exc):
        raise exc
    print(missing_line(exc, sys.argv), file=sys.stderr)
    raise SystemExit(EXIT_USAGE) from None
