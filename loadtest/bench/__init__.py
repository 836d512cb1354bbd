"""The benchmark of shared/DESIGN.md's performance budget: tokengate against the simulator,
vllm-router and LiteLLM.

``python -m loadtest.bench [--quick]`` (see ``cli``) and the soak,
``python -m loadtest.bench.soak`` (see ``soak``). docs/benchmarks.md has the results and
what they mean.
"""
