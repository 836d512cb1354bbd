"""``python -m loadtest.bench``: see ``loadtest.bench.cli``."""

from .cli import main

raise SystemExit(main())
