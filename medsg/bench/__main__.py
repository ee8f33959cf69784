"""``python -m medsg.bench ARGS``: the same as ``medsg bench ARGS``."""

from medsg.bench import main

raise SystemExit(main())
