"""How ``bus-mtl`` reports an error the user can fix: ``bus-mtl CMD: error: MESSAGE`` on
stderr, exit code 2, no traceback.

A user error is bad input that its message names:

* a :class:`~bus_mtl.data.errors.DataError` (one line per problem, each naming its file);
* a :class:`ConfigError`: a config value the LightningCLI's data module, model or trainer
  refused while it was being built (``--data.image_size 100``);
* a ``ValueError`` or a missing / wrong-kind path (``FileNotFoundError`` & co.) raised by
  bus_mtl's own code, or by the standard library on its behalf (``json.loads`` of a user's
  file): an unreadable checkpoint, an unknown preset, a value out of range.

Anything else, and a ``ValueError`` out of a third-party library, is a bug: it keeps its
traceback. ``BUS_MTL_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import traceback
from pathlib import Path

DEBUG_ENV = "BUS_MTL_DEBUG"
USER_ERROR_EXIT = 2
# What a bad path the user typed raises (reading a missing file, writing into a file).
PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)

_PACKAGE = Path(__file__).resolve().parents[1]
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


class ConfigError(ValueError):
    """A config value refused while the CLI built its objects; the message names the class
    and the value."""


def debug() -> bool:
    """True when ``BUS_MTL_DEBUG`` is set (to anything but ``0``): tracebacks for all errors."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _is_stdlib(filename: str) -> bool:
    if filename.startswith("<frozen "):
        return True
    path = Path(filename).resolve()
    third_party = {"site-packages", "dist-packages"} & set(path.parts)
    return not third_party and path.is_relative_to(_STDLIB)


def raised_by_bus_mtl(err: BaseException) -> bool:
    """True when the innermost frame of ``err``'s traceback that is not the standard
    library's is bus_mtl's (the ``raise`` of a check, or an ``open`` of a user's path)."""
    frames = [frame for frame, _ in traceback.walk_tb(err.__traceback__)]
    for frame in reversed(frames):
        if not _is_stdlib(frame.f_code.co_filename):
            return Path(frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)
    return False


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is bad input to report in one line (see the module doc)."""
    from bus_mtl.data.errors import DataError

    if isinstance(err, (DataError, ConfigError)):
        return True
    return isinstance(err, (ValueError, *PATH_ERRORS)) and raised_by_bus_mtl(err)


def print_error(command: str, err: BaseException) -> int:
    """Print ``err`` as ``bus-mtl COMMAND: error: MESSAGE`` on stderr (a data error: one
    such line per problem); returns the exit code, 2. With ``BUS_MTL_DEBUG`` set it raises
    ``err`` instead, so a sub-command's own ``except`` shows the traceback too."""
    from bus_mtl.data.errors import DataError

    if debug():
        raise err
    prefix = f"bus-mtl {command}: error:"
    if isinstance(err, DataError) and err.problems:
        errors = [p for p in err.problems if p.severity == "error"] or err.problems
        lines = [f"{prefix} {p.where}: {p.message}" for p in errors]
    else:
        lines = [f"{prefix} {err}"]
    print("\n".join(lines), file=sys.stderr)
    return USER_ERROR_EXIT
