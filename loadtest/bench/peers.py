"""The peers: installed by ``loadtest/peers/install`` into cached venvs, started on loopback."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from launcher.embedded import free_port

from .procs import spawn, wait_ready
from .stack import child_env
from .targets import MODEL, Target

INSTALL = Path(__file__).resolve().parents[1] / "peers" / "install"
INSTALL_TIMEOUT_S = 1800


@dataclass(frozen=True)
class PeerInstall:
    """The outcome of installing one peer (``venv`` None when it failed)."""

    name: str
    venv: Path | None
    spec: str = ""
    install_seconds: int | None = None  # of the first install (None when unknown)
    size_mb: int | None = None
    cached: bool = False
    error: str = ""

    def status(self) -> str:
        if self.venv is None:
            return f"not installed: {self.error}"
        how = "cached" if self.cached else "installed now"
        return f"{self.spec}, {how} (install took {self.install_seconds} s, venv {self.size_mb} MB)"


def install(name: str) -> PeerInstall:
    """Run the install script (a no-op when the venv is cached); never raises."""
    try:
        done = subprocess.run(["bash", str(INSTALL), name], capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return PeerInstall(name, None, error=str(exc))
    if done.returncode != 0:
        log(done.stderr.rstrip())
        failed = [line for line in done.stderr.splitlines() if " failed: " in line]
        reason = failed[-1].split(" failed: ", 1)[1] if failed else f"exit {done.returncode}"
        return PeerInstall(name, None, error="install failed: " + reason.split(" (log: ")[0])
    venv = Path(done.stdout.strip().splitlines()[-1])
    info: dict[str, object] = {}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((venv / "install.json").read_text())
    cached = "peers: installing" not in done.stderr
    seconds, size = info.get("install_seconds"), info.get("size_mb")
    return PeerInstall(name, venv, str(info.get("spec", name)),
                       seconds if isinstance(seconds, int) else None,
                       size if isinstance(size, int) else None, cached)


def _version(peer: PeerInstall) -> str:
    return peer.spec.split("==")[-1] if "==" in peer.spec else "?"


def start_vllm_router(peer: PeerInstall, workdir: Path, sim_url: str) -> Target:
    assert peer.venv is not None
    port = free_port()
    args = [str(peer.venv / "bin" / "vllm-router"), "--host", "127.0.0.1", "--port", str(port),
            "--worker-urls", sim_url, "--policy", "round_robin"]
    child = spawn("vllm-router", args, workdir / "vllm-router.log", env=child_env(), cwd=workdir)
    base = f"http://127.0.0.1:{port}"
    wait_ready(child, base + "/health", 60)
    return Target("vllm-router", base + "/v1", "bench", child, _version(peer),
                  "vllm-router --policy round_robin (routing only, no metering)")


def start_litellm(peer: PeerInstall, workdir: Path, sim_url: str) -> Target:
    """LiteLLM proxy, one worker, no database; a master key so that auth is on."""
    assert peer.venv is not None
    port = free_port()
    master_key = "sk-bench-" + secrets.token_hex(16)
    config = workdir / "litellm.yaml"
    config.write_text(
        f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: {sim_url}/v1
      api_key: none
general_settings:
  master_key: {master_key}
""",
        encoding="utf-8",
    )
    args = [str(peer.venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1"]
    env = child_env(LITELLM_LOCAL_MODEL_COST_MAP="True")
    child = spawn("litellm", args, workdir / "litellm.log", env=env, cwd=workdir)
    base = f"http://127.0.0.1:{port}"
    wait_ready(child, base + "/health/liveliness", 180)
    return Target("litellm", base + "/v1", master_key, child, _version(peer),
                  "litellm --num_workers 1, no database, master key, LITELLM_LOCAL_MODEL_COST_MAP")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
