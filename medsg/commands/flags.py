"""Flags that several commands take, defined once so that each is spelled and means the same everywhere.

``--fold`` a fold index (``all``: the final model, where a command takes it), ``--models`` which of a run's
trained models (``folds``, ``all``, ``both``), ``--model`` a timm architecture name, ``--device`` where torch
runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``), ``--out`` an output folder (not a file), ``--set`` a config override and ``--option`` an adapter option
(both ``KEY=VALUE``, the value read as YAML by ``medsg.config.parse_key_value``), ``--force`` past a write guard.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medsg.data.manifest import adapter_names

FINAL = "all"  # --fold all: the final model trained on every image (medsg.train.final.ALL)


def folder_arg(text: str) -> str:
    """An output folder (created when absent): refused at once when the path is an existing file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} is a file, not a folder; name a folder (it is made if absent)"
        )
    return text


def fold_arg(text: str) -> int | str:
    """``--fold`` value: a fold index, or ``all`` (the final model trained on every image)."""
    if text == FINAL:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fold index or 'all'") from None


def add_fold(
    parser: argparse.ArgumentParser, help: str, *, final: bool = False, repeatable: bool = True
) -> None:
    """``--fold K`` (``args.fold``: a list when ``repeatable``, else one required index); ``final``: ``all`` too."""
    kind = fold_arg if final else int
    if repeatable:
        parser.add_argument("--fold", type=kind, action="append", default=None, metavar="K", help=help)
    else:
        parser.add_argument("--fold", type=kind, required=True, metavar="K", help=help)


def add_models(parser: argparse.ArgumentParser, choices: Sequence[str], help: str) -> None:
    """``--models``: which of a run's trained models, the fold ensemble (``folds``), the final model (``all``)
    or ``both``; ``None`` when not given (the run's or package's own default)."""
    parser.add_argument("--models", choices=tuple(choices), default=None, help=help)


def add_model(
    parser: argparse.ArgumentParser, default: str | list[str] | None, help: str, *, several: bool = False
) -> None:
    """``--model``: a timm architecture name (never a trained model; that is ``--models``). ``several``: one or
    more names, where ``--models`` stays accepted (``medsg bench model``'s spelling before both were one)."""
    if several:
        names = ("--model", "--models")
        parser.add_argument(*names, dest="model", nargs="+", default=default, metavar="NAME", help=help)
    else:
        parser.add_argument("--model", default=default, metavar="NAME", help=help)


def add_device(parser: argparse.ArgumentParser, default: str | None, indexed: bool = True) -> None:
    """``--device``: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or, where ``indexed``, ``cuda:N``
    (``medsg.core.device.torch_device``); ``default`` None: the config's ``train.device``."""
    names = "auto, cpu, cuda or cuda:N" if indexed else "auto, cpu or cuda"
    parser.add_argument("--device", default=default, help=f"{names} (default: {default or 'config'})")


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (``args.overrides``), applied by ``medsg.config.apply_overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=3 (repeatable)",
    )


def add_dataset(
    parser: argparse.ArgumentParser,
    *,
    required: bool = True,
    default: str | None = None,
    adapter_help: str = "dataset adapter",
    root_help: str = "the dataset folder",
) -> None:
    """``--adapter`` (a registered dataset adapter; required unless it has a ``default``) and ``--root``."""
    parser.add_argument(
        "--adapter",
        required=required and default is None,
        default=default,
        choices=adapter_names(),
        help=adapter_help,
    )
    parser.add_argument("--root", required=required, default=None, help=root_help)


def add_options(parser: argparse.ArgumentParser, help: str) -> None:
    """``--option KEY=VALUE`` (``args.option``): adapter options, read with ``parse_options``."""
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help=help)


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``--option`` items as a dict, each value parsed as YAML like a ``--set`` value."""
    from medsg.config import parse_key_value  # pydantic: 0.1 s that `medsg --help` need not pay

    return dict(parse_key_value(item, "--option", "key=value, e.g. subset=validation") for item in items)


def add_force(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--force``: write past a guard that protects a committed or another run's result."""
    parser.add_argument(
        "--force",
        action="store_true",
        help=help
        or "write into this checkout's reports/ even with uncommitted changes (the result names no commit)",
    )
