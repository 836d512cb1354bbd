"""Everything one gateway process owns, built at start-up and closed at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from gateway.accounts import AccountRegistry
from gateway.auth import Authenticator
from gateway.catalog import Catalog, load_catalog
from gateway.durability import check_durability
from gateway.errors import QuotaUnavailable
from gateway.flow import FairSharesCollector
from gateway.keyspace import USAGE_SHARDS
from gateway.metrics import GatewayMetrics
from gateway.ops import (
    REPORT_SECONDS,
    catalog_generation,
    publish_routing,
    withdraw_routing,
    worker_id,
)
from gateway.pipeline import Pipeline
from gateway.quota.scripts import RedisClient
from gateway.quota.store import QuotaStore
from gateway.redisio import fast_redis
from gateway.relay.upstream import UpstreamClient
from gateway.routing.monitor import EndpointMonitor
from gateway.routing.observe import RoutingCollector, describe
from gateway.routing.router import Router
from gateway.settings import Settings
from gateway.token_floor import token_floor
from gateway.tokenizers import load_tokenizer
from gateway.usage import UsageEvent

log = logging.getLogger("tokengate")
JOURNAL_CONFIRM_SECONDS = 1.0  # how often acknowledged usage events leave the journal
SETTLE_DRAIN_SECONDS = 5.0  # at shutdown, how long settlements under way may take


async def _generation(redis: RedisClient) -> int:
    """The catalog generation at start (a reload asked for before is already in the file)."""
    try:
        return await catalog_generation(redis)
    except Exception:  # Redis away at start: readiness says so; reloads resume once it is back
        return 0


def connect_redis(url: str) -> RedisClient:
    """A client for ``REDIS_URL``; ``redis+cluster://host:port`` means a Redis Cluster.

    Few retries: a request waiting on Redis is better refused (503) than left hanging.
    """
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.01), retries=2)
    if url.startswith("redis+cluster://"):
        return RedisCluster.from_url(
            "redis://" + url.removeprefix("redis+cluster://"),
            socket_connect_timeout=2, socket_timeout=5, retry=retry,
        )
    return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, retry=retry)


@dataclass
class GatewayState:
    settings: Settings
    redis: RedisClient
    quota: QuotaStore
    authenticator: Authenticator
    accounts: AccountRegistry
    pipeline: Pipeline
    metrics: GatewayMetrics
    upstream: UpstreamClient
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings, catalog: Catalog | None = None) -> GatewayState:
        catalog = catalog or load_catalog(settings.config_path)
        for model in catalog.models.values():
            load_tokenizer(model.tokenizer)  # fail at start, not on the first request
            token_floor(model.tokenizer)  # read the vocabulary now, not on the first big prompt
        redis = connect_redis(settings.redis_url)
        await check_durability(redis)
        fast = fast_redis(settings.redis_url, settings.redis_timeout)  # the request path's
        quota = QuotaStore(redis, fast=fast, lease_ms=int(settings.lease_seconds * 1000),
                           timeout_s=settings.redis_timeout)
        authenticator = Authenticator(fast, settings.auth_cache_seconds)
        metrics = GatewayMetrics()
        upstream = UpstreamClient(settings)
        router = Router(catalog)
        metrics.watch(RoutingCollector(router))
        pipeline = Pipeline(settings, catalog, authenticator, quota, router, upstream, metrics)
        metrics.watch(FairSharesCollector(pipeline.flow))
        state = cls(settings, redis, quota, authenticator, AccountRegistry(redis, quota),
                    pipeline, metrics, upstream)
        state.tasks.append(asyncio.create_task(state._reap_forever()))
        state.tasks.append(asyncio.create_task(state._report_forever(await _generation(redis))))
        state.tasks.append(asyncio.create_task(EndpointMonitor(router, upstream).run()))
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, state._reload_on_signal)
        return state

    def reload_catalog(self) -> Catalog:
        """Swap in a new models.yaml; requests in flight keep the model they started with."""
        catalog = load_catalog(self.settings.config_path, tokenizers=True)
        for model in catalog.models.values():
            token_floor(model.tokenizer)  # a new tokenizer's vocabulary read here, once
        self.pipeline.catalog = catalog
        self.pipeline.router.sync(catalog)  # endpoint state survives for URLs that remain
        self.pipeline.flow.configure(catalog.routing)
        return catalog

    def _reload_on_signal(self) -> None:
        self._reload("SIGHUP")

    def _reload(self, why: str) -> None:
        """Reload models.yaml; a bad file is logged and the old catalog kept."""
        try:
            catalog = self.reload_catalog()
        except Exception as exc:  # a bad file must not take the gateway down
            log.error("%s: models.yaml not reloaded: %s", why, exc)
            return
        log.warning("%s: models.yaml reloaded (%d models)", why, len(catalog.models))

    async def _report_forever(self, generation: int) -> None:
        """Publish the router's view for the control plane (``/admin/endpoints``) and
        reload models.yaml when the control plane asks (``/admin/config/reload``)."""
        worker = worker_id()
        try:
            while True:
                await asyncio.sleep(REPORT_SECONDS)
                try:
                    await publish_routing(self.redis, worker, describe(self.pipeline.router))
                    latest = await catalog_generation(self.redis)
                except Exception as exc:  # Redis away: the next pass tries again
                    log.debug("ops report: %s", exc)
                    continue
                if latest != generation:
                    generation = latest
                    self._reload("admin API")
        finally:
            with contextlib.suppress(Exception):
                await withdraw_routing(self.redis, worker)

    async def close(self) -> None:
        await self.pipeline.drain(SETTLE_DRAIN_SECONDS)  # while Redis is still connected
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.upstream.close()
        await self.redis.aclose()
        if self.quota.fast is not None:
            await self.quota.fast.aclose()

    def _uncollected(self, event: UsageEvent) -> None:
        """An expiry's cost beyond what the balance could pay: counted and logged, as the
        request path's settlement does (Pipeline.settle)."""
        if event.uncollected > 0:
            self.metrics.unpaid(event.model, event.uncollected)
            log.warning("request %s (expired): %d credits uncollected", event.request_id, event.uncollected)

    async def _reap_forever(self) -> None:
        """Settle reservations whose gateway died (lease past its deadline) as 'expired',
        every reaper interval; between reaps, confirm the settlement journal every second,
        so that it holds no more than the events billing has yet to acknowledge."""
        interval = self.settings.reaper_interval
        next_reap = time.monotonic() + interval
        while True:
            await asyncio.sleep(min(interval, JOURNAL_CONFIRM_SECONDS))
            reap = time.monotonic() >= next_reap
            if reap:
                next_reap = time.monotonic() + interval
            shards = range(USAGE_SHARDS) if reap else self.quota.journal.shards()
            for shard in shards:
                try:
                    if reap:
                        for event in await self.quota.reap(shard, 100):  # confirms the journal first
                            self._uncollected(event)
                    else:
                        await self.quota.confirm_journal(shard)
                except QuotaUnavailable as exc:  # the store maps Redis's outages to it
                    log.warning("reaper: Redis unavailable (%s)", (exc.__cause__ or exc).__class__.__name__)
                    break
                except Exception:  # a bug here must not end reaping and journal confirmation
                    log.exception("reaper: pass over shard %d failed", shard)
