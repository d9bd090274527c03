"""Every kustomize overlay under deploy/kubernetes renders with ``kubectl kustomize`` and its output
validates offline against the Kubernetes schemas (PyPI kubernetes-validate, strict: unknown fields
are errors). Custom resources (ServiceMonitor, KServe) have no schema there: they get a light check
of apiVersion, kind and the fields their controllers need. Then what the deployment promises is
checked on the rendered objects: probes, drain timing, ports, security, mounts where the settings
point."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from visionrpc.settings import Settings

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
OVERLAYS = ["base", "overlays/cpu", "overlays/gpu", "overlays/tls", "overlays/kserve"]
KUBERNETES_VERSION = "1.30.0"
"""Oldest version the manifests target (native gRPC probes GA in 1.27, preStop sleep in 1.30)."""
GRPC_PORT, METRICS_PORT = 50051, 9464

CUSTOM: dict[tuple[str, str], list[str]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ["spec.selector", "spec.endpoints"],
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): [
        "spec.supportedModelFormats",
        "spec.containers",
        "spec.protocolVersions",
    ],
    ("serving.kserve.io/v1beta1", "InferenceService"): [
        "spec.predictor.model.modelFormat.name",
        "spec.predictor.model.runtime",
    ],
}
"""Custom resources: (apiVersion, kind) -> dotted paths that must be present."""

kubectl = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    kubectl is None, reason="kubectl is not installed: the manifests cannot be rendered here"
)


def render(overlay: str) -> list[dict[str, Any]]:
    assert kubectl is not None
    done = subprocess.run(
        [kubectl, "kustomize", str(ROOT / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def field(obj: dict[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        assert isinstance(value, dict) and part in value, f"{obj['kind']} lacks {path}"
        value = value[part]
    return value


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay: str) -> None:
    import kubernetes_validate  # type: ignore[import-untyped]

    docs = render(overlay)
    assert docs
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CUSTOM:  # no schema for CRDs: check what their controllers need
            assert doc["metadata"]["name"]
            for path in CUSTOM[key]:
                assert field(doc, path), f"{doc['kind']} {path} is empty"
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {doc['kind']} {doc['metadata']['name']}: {exc.message}")


def _server(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def _env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    env = dict(one(docs, "ConfigMap", "visionrpc-settings")["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    return env


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu", "overlays/tls"])
def test_deployment_keeps_its_promises(overlay: str) -> None:
    docs = render(overlay)
    pod, container = _server(docs)
    env = _env(docs, container)
    # drain: preStop + grace below the pod's termination grace
    grace = float(env["VISIONRPC_GRACE_PERIOD_S"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace
    # non-root, read-only root with a writable /tmp
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # ports named as the metrics contract says
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    assert env["VISIONRPC_PORT"] == str(GRPC_PORT)
    assert env["VISIONRPC_METRICS__PORT"] == str(METRICS_PORT)
    # files the settings name are mounted from Secrets
    for variable in ("VISIONRPC_AUTH__TOKENS_FILE", "VISIONRPC_TLS__CERT_FILE"):
        if variable in env:
            folder = str(Path(env[variable]).parent)
            assert "secret" in volumes[mounts[folder]], f"{variable} is not on a Secret"
    # probes: native gRPC on the health service, or the light exec check when TLS is on
    probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    if "VISIONRPC_TLS__CERT_FILE" in env:
        check = ["python", "-m", "visionrpc.healthcheck"]
        assert all(p["exec"]["command"][:3] == check for p in probes)
        assert "VISIONRPC_CA_FILE" in env
    else:
        assert all(p["grpc"]["port"] == GRPC_PORT for p in probes)
        assert probes[1]["grpc"]["service"] == "visionrpc.v1.InferenceMethods"
    # connection age on, so clients of the headless Service rebalance
    assert int(env["VISIONRPC_CONNECTIONS__MAX_CONNECTION_AGE_MS"]) > 0
    headless = one(docs, "Service", "visionrpc-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert one(docs, "Service", "visionrpc")["spec"]["type"] == "ClusterIP"
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_the_configmap_settings_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every VISIONRPC_* variable of the ConfigMap parses (a typo would stop the pod)."""
    env = one(render("overlays/cpu"), "ConfigMap", "visionrpc-settings")["data"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.connections.max_connection_age_ms == int(
        env["VISIONRPC_CONNECTIONS__MAX_CONNECTION_AGE_MS"]
    )
    assert settings.grace_period_s == float(env["VISIONRPC_GRACE_PERIOD_S"])


def test_gpu_overlay_asks_for_a_gpu_keeps_engines_and_scales_on_the_queue() -> None:
    docs = render("overlays/gpu")
    pod, container = _server(docs)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith(":gpu")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts["/var/cache/visionrpc"]]
    assert (
        container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"]
        >= 30 * 60
    )
    hpa = one(docs, "HorizontalPodAutoscaler")
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert names == {"visionrpc_queue_compute_ratio", "visionrpc_inference_queue_depth"}


def test_prometheus_adapter_rules_name_the_contract_metrics() -> None:
    import kubernetes_validate

    path = ROOT / "components" / "queue-autoscaling" / "prometheus-adapter-rules.yaml"
    config_map = yaml.safe_load(path.read_text())
    kubernetes_validate.validate(config_map, KUBERNETES_VERSION, strict=True)
    rules = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    text = yaml.safe_dump(rules)
    for metric in (
        "visionrpc_inference_queue_seconds_total",
        "visionrpc_inference_compute_seconds_total",
        "visionrpc_inference_queue_depth",
    ):
        assert metric in text
    assert {r["name"].get("as", "visionrpc_inference_queue_depth") for r in rules} == {
        "visionrpc_queue_compute_ratio",
        "visionrpc_inference_queue_depth",
    }


def test_kserve_runtime_serves_grpc_on_one_h2c_port() -> None:
    docs = render("overlays/kserve")
    runtime = one(docs, "ServingRuntime")
    container = runtime["spec"]["containers"][0]
    assert [p["name"] for p in container["ports"]] == ["h2c"]
    port = container["ports"][0]["containerPort"]
    args = container["args"]
    assert args[args.index("--port") + 1] == str(port)
    assert args[args.index("--models") + 1] == "/mnt/models"
    assert container["readinessProbe"]["grpc"]["port"] == port
    service = one(docs, "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
