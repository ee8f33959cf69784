"""The ``medsg`` command: the global flags, logging and error handling around the subcommands, which live one
module each in ``medsg.commands`` (run, report, explain, export, predict, evaluate, pretrain, compare,
reproduce, config, splits, audit, demo, bench, info).

Errors a user can cause (``MedsgError``, or a missing file they named) print one line ``medsg: error: ...``
and exit with status 2, also when a library wrapped them (MONAI raises ``RuntimeError("applying transform ...")``
from the error of a transform); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from medsg.commands import COMMANDS
from medsg.core.errors import MedsgError
from medsg.core.malloc import keep_freed_memory

log = logging.getLogger("medsg")

BY_NAME = {command.NAME: command for command in COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    """The ``medsg`` argument parser: the global flags, then each command module's own arguments."""
    parser = argparse.ArgumentParser(
        prog="medsg", description="Transfer learning for medical images with SG-Former."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_arguments(sub.add_parser(command.NAME, help=command.HELP, description=command.HELP))
    return parser


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed subcommand; returns its exit status."""
    return BY_NAME[args.command].run(args)


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if not debug:
        for noisy in ("PIL", "matplotlib", "monai"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


USER_ERRORS = (MedsgError, FileNotFoundError)


def find_user_error(exc: BaseException) -> BaseException | None:
    """``exc`` or the first error in its ``__cause__`` / ``__context__`` chain that a user can fix, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, USER_ERRORS):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def one_line(exc: BaseException) -> str:
    """The message on one line, whatever whitespace it holds; the exception type when it has no message."""
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medsg`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.debug, args.quiet)
    keep_freed_memory()  # CPU forward passes page-fault much less (medsg.core.malloc)
    try:
        return dispatch(args)
    except Exception as exc:
        user_error = find_user_error(exc)
        if args.debug or user_error is None:
            raise
        print(f"medsg: error: {one_line(user_error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medsg: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
