"""``tokengate bridge``: load the cluster, check where it listens, serve it with uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys

log = logging.getLogger("tokengate.bridge")


def listen_check(host: str) -> str | None:
    """Why ``host`` must not be listened on (None: a loopback or private address, or all
    interfaces, which is warned about). The bridge spends the provider account: only the
    data plane may reach it."""
    if host in ("0.0.0.0", "::", ""):
        log.warning("the bridge listens on every interface: keep its port off public networks "
                    "(a firewall, or --host with a private address)")
        return None
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError as exc:
        return f"cannot resolve --host {host}: {exc}"
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not (ip.is_loopback or ip.is_private or ip.is_link_local):
            return (f"--host {host} is a public address ({address}): the bridge listens on loopback "
                    "or a private network only")
    return None


def run(config: str, cluster: str, host: str, port: int, log_level: str) -> int:
    # litellm fetches its price list from the internet at import unless told otherwise; the
    # gateway prices tokens itself, so the copy litellm ships is all it may read.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    import uvicorn

    from bridge.app import BridgeApp
    from bridge.target import TargetError, load_target
    from gateway.catalog import CatalogError, load_catalog

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    litellm.suppress_debug_info = True
    logging.getLogger("LiteLLM").setLevel(max(logging.WARNING, logging.getLogger().level))
    litellm.drop_params = False  # a parameter the provider lacks is refused, never dropped
    problem = listen_check(host)
    if problem:
        print(f"tokengate bridge: {problem}", file=sys.stderr)
        return 2
    try:
        target = load_target(load_catalog(config, tokenizers=True), cluster)
    except (CatalogError, TargetError) as exc:
        print(f"tokengate bridge: {exc}", file=sys.stderr)
        return 2
    log.info("bridge for cluster %s (%s): %s", cluster, target.provider.name,
             ", ".join(sorted(target.models or {})))
    uvicorn.run(BridgeApp(target), host=host, port=port, loop="uvloop", http="httptools",
                log_level=log_level, access_log=False, proxy_headers=False)
    return 0
