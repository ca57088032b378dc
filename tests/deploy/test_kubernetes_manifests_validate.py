"""deploy/k8s passes an offline schema validator (kubernetes-validate ships the schemas) in strict mode, and
holds what the issue asks: GPU requests and node selectors, probes on /api/v1/health, a PodDisruptionBudget,
a migration Job, settings from a ConfigMap and a Secret."""

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.files import K8S, k8s_containers, k8s_documents

VERSION = "1.31.0"  # the oldest Kubernetes these manifests are meant for


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_documents() if doc["kind"] == kind}


@pytest.mark.parametrize("path", sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"),
                         ids=lambda p: p.name)
@pytest.mark.parametrize("version", [VERSION, kubernetes_validate.latest_version()])
def test_manifest_passes_the_schema(path: Path, version: str) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_wrong_manifest() -> None:
    web = dict(_by_kind("Deployment")["foundry-web"])
    web["spec"] = {**web["spec"], "replicas": "two"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, VERSION, strict=True)
    web["spec"] = {**web["spec"], "replicas": 2, "replica": 2}  # a typo: only strict mode sees it
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_web_probes_call_the_health_endpoint_as_an_allowed_https_host() -> None:
    [web] = [c for name, c in k8s_containers() if name == "Deployment/foundry-web"]
    config = _by_kind("ConfigMap")["foundry-config"]["data"]
    for probe in (web["readinessProbe"], web["livenessProbe"]):
        assert probe["httpGet"]["path"] == "/api/v1/health"
        headers = {h["name"]: h["value"] for h in probe["httpGet"]["httpHeaders"]}
        assert headers["Host"] in config["ALLOWED_HOSTS"].split(",")
        assert headers["X-Forwarded-Proto"] == "https"  # else FOUNDRY_PRODUCTION's SSL redirect answers 301


def test_gpu_training_workers_request_a_gpu_on_their_class_of_node() -> None:
    deployment = _by_kind("Deployment")["foundry-worker-train-24g"]
    pod = deployment["spec"]["template"]["spec"]
    [worker] = pod["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"foundry.example.com/gpu-class": "24g"}
    assert worker["command"][worker["command"].index("-Q") + 1].split(",")[0] == "train-24g"
    assert pod["terminationGracePeriodSeconds"] >= 300  # SIGTERM checkpoints before the pod goes


def test_disruption_budgets_cover_web_and_training_workers() -> None:
    budgets = _by_kind("PodDisruptionBudget")
    selected = {b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for b in budgets.values()}
    assert selected == {"web", "worker-train"}


def test_a_job_migrates_before_the_deployments_roll() -> None:
    [job] = _by_kind("Job").values()
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert "manage.py migrate" in container["command"][-1]


def test_every_container_takes_its_settings_from_the_configmap_and_the_secret() -> None:
    for name, container in k8s_containers():
        sources = {next(iter(s)): next(iter(s.values()))["name"] for s in container["envFrom"]}
        assert sources == {"configMapRef": "foundry-config", "secretRef": "foundry-secrets"}, name
    assert not _by_kind("Secret"), "secrets are never committed: README.md says how to create foundry-secrets"
