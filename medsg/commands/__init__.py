"""The ``medsg`` subcommands, one module each, in the order ``medsg --help`` lists them.

Each module has ``NAME`` and ``HELP``, ``add_arguments(parser)`` and ``run(args) -> exit status``; flags that
several commands take come from ``medsg.commands.flags``. Torch-heavy modules (experiment, predict, evaluate,
explain_run) are imported inside ``run`` so that ``medsg --help`` stays quick.
"""

from __future__ import annotations

from medsg.commands import (
    audit,
    bench,
    compare,
    config,
    demo,
    ensemble,
    evaluate,
    explain,
    export,
    info,
    predict,
    pretrain,
    report,
    reproduce,
    run,
    splits,
)

COMMANDS = (
    run,
    report,
    explain,
    export,
    predict,
    evaluate,
    pretrain,
    compare,
    ensemble,
    reproduce,
    config,
    splits,
    audit,
    demo,
    bench,
    info,
)
