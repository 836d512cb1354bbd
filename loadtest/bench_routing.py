"""Cost of a routing decision: microseconds per pick, in-process, no I/O.

    python -m loadtest.bench_routing [--picks 100000]

Builds routers over catalogs of 3 to 64 endpoints with realistic state (in-flight counts,
fresh scraped metrics, one endpoint ejected) and times ``Router.pick`` as the pipeline
calls it, plus the prefix key and the started/responded/finished bookkeeping around a
request. Prints the best of five runs per case (the least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from gateway.catalog import Catalog, Model, parse_catalog
from gateway.routing import health
from gateway.routing.router import Router

SYSTEM = "You are a meticulous assistant for the municipal archive of Wuhan. " * 15
BODY = {"model": "m", "messages": [{"role": "system", "content": SYSTEM},
                                   {"role": "user", "content": "Where are the 1931 flood records?"}]}


def make_catalog(endpoints: int, clusters: int, prefer: bool) -> Catalog:
    lines = ["clusters:"]
    for c in range(clusters):
        lines += [f"  - name: c{c}", f"    region: r{c}", "    endpoints:"]
        lines += [f"      - url: http://10.0.{c}.{i}:8000" for i in range(endpoints // clusters)]
    lines += ["models:", "  - name: m", "    context_window: 4096", "    price: {input: 1, output: 1}",
              f"    deployments: [{', '.join(f'c{c}' for c in range(clusters))}]"]
    if prefer:
        lines.append("    prefer: [r0]")
    return parse_catalog("\n".join(lines) + "\n")


def make_router(endpoints: int, clusters: int, prefer: bool = False) -> tuple[Router, Model]:
    catalog = make_catalog(endpoints, clusters, prefer)
    router = Router(catalog, rng=random.Random(1))
    rng = random.Random(2)
    now = time.monotonic()
    for i, state in enumerate(router.states.values()):
        state.in_flight = rng.randrange(0, 24)
        health.scraped(state, rng.randrange(0, 64), rng.randrange(0, 4), rng.random() * 0.9, now)
        if i == 1:
            health.eject(state, now, router.config, "outlier")
    return router, catalog.models["m"]


def best_of(runs: int, count: int, step: Callable[[], object]) -> float:
    """Microseconds per call, best of ``runs``."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter_ns()
        for _ in range(count):
            step()
        best = min(best, (time.perf_counter_ns() - started) / count / 1000)
    return best


def pick_cases(picks: int, endpoints: int, clusters: int) -> list[tuple[str, float]]:
    router, model = make_router(endpoints, clusters)
    key = router.affinity_key(BODY)
    return [
        (f"pick, {endpoints} endpoints, no prefix key", best_of(5, picks, lambda: router.pick(model))),
        (f"pick, {endpoints} endpoints, prefix key", best_of(5, picks, lambda: router.pick(model, key))),
    ]


def cases(picks: int) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for endpoints, clusters in ((3, 2), (12, 3), (64, 4)):
        out += pick_cases(picks, endpoints, clusters)
    router, model = make_router(3, 2, prefer=True)
    key = router.affinity_key(BODY)
    out.append(("pick, 3 endpoints, region preference + key",
                best_of(5, picks, lambda: router.pick(model, key))))
    first = router.pick(model, key)
    out.append(("retry pick (one endpoint tried), 3 endpoints",
                best_of(5, picks, lambda: router.pick(model, key, (first,)))))
    out.append(("prefix key of a 1 KB system prompt", best_of(5, picks, lambda: router.affinity_key(BODY))))

    def bookkeeping() -> None:
        router.started(first)
        router.responded(first)
        router.finished(first, ok=True)

    out.append(("started + responded + finished", best_of(5, picks, bookkeeping)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--picks", type=int, default=100_000)
    args = parser.parse_args(argv)
    width = 48
    print(f"{'routing decision':<{width}} µs per call")
    for name, micros in cases(args.picks):
        print(f"{name:<{width}} {micros:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
