"""The Kubernetes Job dagster-k8s would create for every asset's step, built from the step's
``dagster-k8s/config`` tag with dagster-k8s's own functions and validated strictly against the
OpenAPI schema of the Kubernetes version the deployment targets (``placement.K8S_VERSION``)."""

import json
from types import SimpleNamespace

import kubernetes_validate
import pytest
from dagster import asset, load_assets_from_modules
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.execution.retries import RetryMode
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._grpc.types import ExecuteStepArgs
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_k8s_job_name,
    get_user_defined_k8s_config,
)
from kubernetes.client import ApiClient

from quant_assets.placement.apply import K8S_CONFIG_TAG, apply_placement
from quant_assets.placement.kubernetes import K8S_VERSION
from quant_assets.placement.policy import POOL_LABEL, load_policy

JOB_IMAGE = "quant-assets:0.1.0"
RUN_ID = "7d3c2a5e-1b4f-4c8e-9a60-0f2b7c1d9e35"
# What the Helm chart gives the run launcher / the k8s executor of the deployment.
HELM = {
    "namespace": "quant",
    "service_account_name": "quant-assets",
    "image_pull_policy": "IfNotPresent",
    "image_pull_secrets": [{"name": "registry-credentials"}],
    "env_config_maps": ["quant-assets-env"],
    "env_secrets": ["quant-assets-aws"],
    "labels": {"app.kubernetes.io/part-of": "quant-assets"},
}


@pytest.fixture(scope="module")
def policy():
    return load_policy()


@pytest.fixture(scope="module")
def placed(policy):
    from quant_assets.definitions import STAGES

    # scoring with the sequence model (not written yet) must land on the GPU pool too;
    # the real daily_scores scores with the LightGBM champion, on CPU
    @asset(group_name="serving", kinds={"pytorch"}, deps=["seq_model"])
    def seq_scores():
        return 1

    return apply_placement([*load_assets_from_modules(STAGES), seq_scores], policy)


def _steps(placed):
    """(asset key, op name, op tags) of every asset's step."""
    return [(k.to_user_string(), a.op.name, a.op.tags) for a in placed for k in a.keys]


def _args_and_env(job_name: str, step_key: str):
    """The command and env of a step worker, as the k8s executor builds them."""
    origin = JobPythonOrigin(
        job_name,
        RepositoryPythonOrigin(
            executable_path="/usr/local/bin/python",
            code_pointer=ModuleCodePointer(
                "quant_assets.definitions", "defs", working_directory="/opt/dagster/app"
            ),
            container_image=JOB_IMAGE,
        ),
    )
    step_args = ExecuteStepArgs(
        job_origin=origin,
        run_id=RUN_ID,
        step_keys_to_execute=[step_key],
        instance_ref=None,
        retry_mode=RetryMode.DISABLED,
        should_verify_step=True,
    )
    env = [
        *step_args.get_command_env(),
        {"name": "DAGSTER_RUN_JOB_NAME", "value": job_name},
        {"name": "DAGSTER_RUN_STEP_KEY", "value": step_key},
    ]
    return step_args.get_command_args(skip_serialized_namedtuple=True), env


def _labels(job_name: str, step_key: str) -> dict[str, str]:
    return {
        "dagster/job": job_name,
        "dagster/op": step_key,
        "dagster/run-id": RUN_ID,
        "dagster/code-location": "quant_assets",
    }


def _to_dict(job) -> dict:
    return ApiClient().sanitize_for_serialization(job)


def _validate(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _job_from_job_config(step_key: str, tags) -> dict:
    """construct_dagster_k8s_job with a full DagsterK8sJobConfig and the step's tag."""
    job_config = DagsterK8sJobConfig(
        job_image=JOB_IMAGE,
        dagster_home="/opt/dagster/dagster_home",
        image_pull_policy=HELM["image_pull_policy"],
        image_pull_secrets=HELM["image_pull_secrets"],
        service_account_name=HELM["service_account_name"],
        instance_config_map="dagster-instance",
        postgres_password_secret="dagster-postgresql-secret",
        env_config_maps=HELM["env_config_maps"],
        env_secrets=HELM["env_secrets"],
        labels=HELM["labels"],
    )
    job_name = get_k8s_job_name(RUN_ID, step_key)
    args, env = _args_and_env("monthly_models_job", step_key)
    job = construct_dagster_k8s_job(
        job_config=job_config,
        args=args,
        job_name=f"dagster-step-{job_name}",
        user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
            json.loads(tags[K8S_CONFIG_TAG])
        ),
        pod_name=f"dagster-step-{job_name}",
        component="step_worker",
        labels=_labels("monthly_models_job", step_key),
        env_vars=env,
    )
    return _to_dict(job)


def _job_like_the_executor(step_key: str, tags, helm_step_config: dict | None = None) -> dict:
    """The path K8sStepHandler.launch_step takes: executor container context (Helm values)
    merged with the step's tag (get_user_defined_k8s_config), then construct_dagster_k8s_job."""
    executor_context = K8sContainerContext(
        image_pull_policy=HELM["image_pull_policy"],
        image_pull_secrets=HELM["image_pull_secrets"],
        service_account_name=HELM["service_account_name"],
        env_config_maps=HELM["env_config_maps"],
        env_secrets=HELM["env_secrets"],
        labels=HELM["labels"],
        namespace=HELM["namespace"],
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(helm_step_config or {}),
    )
    context = executor_context.merge(
        K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags))
    )
    run_launcher = SimpleNamespace(
        job_image=None,
        dagster_home="/opt/dagster/dagster_home",
        instance_config_map="dagster-instance",
        postgres_password_secret="dagster-postgresql-secret",
    )
    job_config = context.get_k8s_job_config(JOB_IMAGE, run_launcher)
    job_name = f"dagster-step-{get_k8s_job_name(RUN_ID, step_key)}"
    args, env = _args_and_env("__ASSET_JOB", step_key)
    job = construct_dagster_k8s_job(
        job_config=job_config,
        args=args,
        job_name=job_name,
        pod_name=job_name,
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels=_labels("__ASSET_JOB", step_key),
        env_vars=env,
    )
    return _to_dict(job)


def _pod(job: dict) -> tuple[dict, dict]:
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def _check_placement(job: dict, pool: str, policy) -> None:
    spec, container = _pod(job)
    settings = policy.pools[pool].k8s
    assert job["metadata"]["labels"][POOL_LABEL] == pool
    assert job["spec"]["template"]["metadata"]["labels"][POOL_LABEL] == pool
    assert container["resources"] == settings["resources"]
    assert container["image"] == settings.get("image", JOB_IMAGE)
    for key, value in settings["nodeSelector"].items():
        assert spec["nodeSelector"][key] == value
    for toleration in settings.get("tolerations", []):
        assert toleration in spec.get("tolerations", [])
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    if pool == "gpu":
        assert gpus == "1"
        assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    else:
        assert gpus is None
        assert "nvidia.com/gpu.present" not in spec["nodeSelector"]
        assert not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))


def test_every_assets_job_validates_strictly(placed, policy):
    pools = set()
    for key, step_key, tags in _steps(placed):
        job = _job_from_job_config(step_key, tags)
        try:
            _validate(job)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{key}: the step Job is not valid Kubernetes {K8S_VERSION}: {exc}")
        spec, container = _pod(job)
        assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
        assert spec["serviceAccountName"] == HELM["service_account_name"]
        assert container["imagePullPolicy"] == HELM["image_pull_policy"]
        assert {"configMapRef": {"name": "quant-assets-env"}} in container["envFrom"]
        assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "step_worker"
        pool = next(iter(placed_pools(placed)[key]))
        _check_placement(job, pool, policy)
        pools.add(pool)
    assert pools == {"cpu", "cpu-highmem", "gpu"}


def placed_pools(placed) -> dict[str, set[str]]:
    return {k.to_user_string(): {a.op.pool} for a in placed for k in a.keys}


def test_every_assets_job_validates_on_the_executor_path(placed, policy):
    # The chart adds a toleration and a pod annotation for every step; the pool's settings are
    # deep-merged into them (lists appended, mappings merged), as dagster-k8s does.
    helm_step_config = {
        "pod_spec_config": {
            "tolerations": [{"key": "quant-assets/batch", "operator": "Exists",
                             "effect": "NoSchedule"}],
        },
        "pod_template_spec_metadata": {"annotations": {"cluster-autoscaler.kubernetes.io/"
                                                       "safe-to-evict": "false"}},
    }
    for key, step_key, tags in _steps(placed):
        job = _job_like_the_executor(step_key, tags, helm_step_config)
        try:
            _validate(job)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{key}: the step Job is not valid Kubernetes {K8S_VERSION}: {exc}")
        pool = next(iter(placed_pools(placed)[key]))
        _check_placement(job, pool, policy)
        spec, container = _pod(job)
        assert {"key": "quant-assets/batch", "operator": "Exists", "effect": "NoSchedule"} in (
            spec["tolerations"]
        )
        assert {"name": "DAGSTER_RUN_STEP_KEY", "value": step_key} in container["env"]


def test_strict_validation_catches_a_broken_job(placed):
    """The schema check is strict: an unknown field anywhere in the Job fails it."""
    _, step_key, tags = _steps(placed)[0]
    job = _job_from_job_config(step_key, tags)
    _validate(job)
    job["spec"]["template"]["spec"]["tolerations"] = [{"key": "a", "efect": "NoSchedule"}]
    with pytest.raises(kubernetes_validate.ValidationError, match="efect"):
        _validate(job)


def test_gpu_cpu_split_follows_the_policy(placed, policy):
    pools = {k.to_user_string(): a.op.pool for a in placed for k in a.keys}
    assert {k for k, p in pools.items() if p == "gpu"} == {"seq_model", "seq_predictions", "seq_scores"}
    assert pools["lgbm_model"] == "cpu"
    assert pools["pit_features"] == "cpu-highmem"
    assert pools["backtest"] == "cpu"
    for key, step_key, tags in _steps(placed):
        job = _job_from_job_config(step_key, tags)
        _, container = _pod(job)
        has_gpu = "nvidia.com/gpu" in container["resources"]["limits"]
        assert has_gpu == (pools[key] == "gpu"), key
        # per-pool image where the pool sets one, the deployment's image otherwise
        expected_image = policy.pools[pools[key]].image or JOB_IMAGE
        assert container["image"] == expected_image
