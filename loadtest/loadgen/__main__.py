"""``python -m loadtest.loadgen``: see ``loadtest.loadgen.cli``."""

from .cli import main

raise SystemExit(main())
