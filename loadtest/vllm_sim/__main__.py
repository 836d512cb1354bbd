"""``python -m loadtest.vllm_sim``: see ``loadtest.vllm_sim.main``."""

from . import main

raise SystemExit(main())
