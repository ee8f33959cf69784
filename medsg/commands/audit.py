"""``medsg audit --adapter A --root R``: check a dataset before training on it."""

from __future__ import annotations

import argparse
import sys

from medsg.commands.flags import add_dataset
from medsg.data import load_manifest
from medsg.data.audit import audit_manifest, summarize, write_audit

NAME = "audit"
HELP = "check a dataset: unreadable files, duplicates, label conflicts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset(parser)
    parser.add_argument("--out", default=None, help="write the JSON report here")


def run(args: argparse.Namespace) -> int:
    """Errors (a missing root, a bad CSV) raise like every other command's."""
    manifest = load_manifest(args.adapter, args.root)
    report = audit_manifest(manifest, progress=not args.quiet and sys.stderr.isatty())
    print(summarize(report))
    if args.out:
        write_audit(report, args.out)
        print(f"report written to {args.out}")
    return 0
