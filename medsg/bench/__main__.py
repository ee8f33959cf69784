"""``python -m medsg.bench ARGS``: ``medsg bench ARGS``, and the entry of ``--memory``'s subprocesses.

The one module under medsg.bench that reaches the CLI: a script at the top of the import graph, which nothing
imports, so medsg.bench itself stays below ``medsg.commands.bench``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from medsg.bench.model import MEMORY_CHILD, memory_child


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [MEMORY_CHILD]:
        print(json.dumps(memory_child(json.loads(argv[1]))))
        return 0
    from medsg.cli import main as cli_main

    return cli_main(["bench", *argv])


if __name__ == "__main__":
    raise SystemExit(main())
