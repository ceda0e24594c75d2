"""deploy/k8s: the plain manifests validate against the Kubernetes schemas (kubernetes-validate, offline) and fit
together (names, labels, probes, settings); the KubeRay RayService is checked structurally: its pod templates
against the Kubernetes schema, its Serve config against the server's settings (and Ray's schema when installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from adaptformer_server.ray_serve import RayOptions
from adaptformer_server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES = "1.30"  # the oldest minor still commonly run; every newer schema accepts these manifests too
NEWEST = ("1.37",)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*", "ignore::DeprecationWarning:pydantic.*")
kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the dev extra has it)")


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> the one document of that kind among deploy/k8s/*.yaml (the plain manifests)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load(path):
            assert doc["kind"] not in out, f"two {doc['kind']} documents"
            out[doc["kind"]] = doc
    return out


@pytest.mark.parametrize("version", [KUBERNETES, *NEWEST])
@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_each_manifest_is_valid_kubernetes(path: str, version: str) -> None:
    for doc in load(K8S / path):
        kv.validate(doc, version, strict=True)  # strict: an unknown (misspelt) field is an error


def test_the_validator_catches_a_misspelt_field() -> None:
    deployment = manifests()["Deployment"]
    container = server_container(deployment)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBERNETES, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    (kustomization,) = load(K8S / "kustomization.yaml")
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def server_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_the_deployment_probes_volumes_and_keys_fit_the_server() -> None:
    m = manifests()
    deployment, service, pvc, secret, hpa = (m[k] for k in ("Deployment", "Service", "PersistentVolumeClaim",
                                                            "Secret", "HorizontalPodAutoscaler"))  # fmt: skip
    pod = deployment["spec"]["template"]
    c = server_container(deployment)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"  # a loading backbone is alive, not ready
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000}
    env = {e["name"]: e for e in c["env"]}
    assert env["ADAPTFORMER_PORT"]["value"] == "8000" and env["ADAPTFORMER_HOST"]["value"] == "0.0.0.0"
    settings = {f"ADAPTFORMER_{name.upper()}" for name in Settings.model_fields}
    assert {n for n in env if n.startswith("ADAPTFORMER_")} <= settings, "a misspelt setting is silently ignored"
    # the store: the claim of pvc.yaml, shared by every replica, mounted where ADAPTFORMER_STORE says
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {v["mountPath"]: v["name"] for v in c["volumeMounts"]}
    store = volumes[mounts[env["ADAPTFORMER_STORE"]["value"]]]
    assert store["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "/tmp" in mounts and c["securityContext"]["readOnlyRootFilesystem"] is True
    # keys: from the Secret, and only settings the server knows
    (source,) = c["envFrom"]
    assert source["secretRef"]["name"] == secret["metadata"]["name"]
    assert set(secret["stringData"]) == {"ADAPTFORMER_ADMIN_KEY", "ADAPTFORMER_API_KEYS"} <= settings
    # the Service selects the pods; the HPA scales the Deployment on CPU
    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}  # fmt: skip
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and c["resources"]["requests"]["cpu"]  # utilization needs requests
    assert hpa["spec"]["minReplicas"] >= 2


def test_the_ingress_hashes_on_the_task() -> None:
    ingress = manifests()["Ingress"]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$arg_task"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == manifests()["Service"]["metadata"]["name"]


# -- KubeRay --------------------------------------------------------------------------------------------------------
def rayservice() -> dict[str, Any]:
    (doc,) = load(K8S / "ray" / "rayservice.yaml")
    return doc


def pod_templates(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = doc["spec"]["rayClusterConfig"]
    out = {"head": spec["headGroupSpec"]["template"]}
    out.update({g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]})
    return out


def test_the_rayservice_has_the_shape_kuberay_reads() -> None:
    doc = rayservice()
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    cluster = doc["spec"]["rayClusterConfig"]
    assert set(cluster) <= {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
                            "workerGroupSpecs", "headServiceAnnotations", "suspend"}  # fmt: skip
    assert set(cluster["headGroupSpec"]) <= {"rayStartParams", "template", "serviceType", "headService"}
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
                              "numOfHosts", "suspend", "scaleStrategy"}  # fmt: skip
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # KubeRay wants strings
    assert all(isinstance(v, str) for v in cluster["headGroupSpec"]["rayStartParams"].values())


@pytest.mark.parametrize("group", ["head", "cpu"])
def test_the_rayservice_pods_are_valid_kubernetes_and_mount_the_store(group: str) -> None:
    template = pod_templates(rayservice())[group]
    kv.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group}, "template": template},
                KUBERNETES, strict=True)  # fmt: skip
    (container,) = template["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    store = serve_config()["applications"][0]["args"]["store"]
    claim = volumes[mounts[store]]["persistentVolumeClaim"]["claimName"]
    assert claim == manifests()["PersistentVolumeClaim"]["metadata"]["name"]  # the same store as the Deployment's
    assert container["envFrom"][0]["secretRef"]["name"] == manifests()["Secret"]["metadata"]["name"]


def serve_config() -> dict[str, Any]:
    return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


def test_the_rayservice_serve_config_builds_this_server() -> None:
    config = serve_config()
    (app,) = config["applications"]
    assert app["import_path"] == "adaptformer_server.ray_serve:app_builder"
    known = set(Settings.model_fields) | set(RayOptions.model_fields)
    assert set(app["args"]) <= known
    Settings(**{k: v for k, v in app["args"].items() if k in Settings.model_fields})
    RayOptions(**{k: v for k, v in app["args"].items() if k in RayOptions.model_fields})
    (deployment,) = app["deployments"]
    assert deployment["name"] == "AdaptFormerServer" and deployment["max_ongoing_requests"] >= 32


@pytest.mark.ray  # needs the ray extra: make test-ray runs it
def test_the_rayservice_fits_the_ray_this_project_installs() -> None:
    """The Serve config passes Ray's own schema, and the cluster runs the Ray version the ray extra installs."""
    from importlib import metadata

    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config())  # Ray's own schema of a Serve config file
    assert rayservice()["spec"]["rayClusterConfig"]["rayVersion"] == metadata.version("ray")
