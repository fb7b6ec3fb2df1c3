"""The deployment files, checked without a cluster: Helm values for the Dagster chart
(deploy/helm/values.yaml), the instance file (deploy/dagster.yaml, against Dagster's own
config schemas) and the Dockerfiles (deploy/docker/*.Dockerfile: pinned bases and packages,
non-root user). Kubernetes objects are validated strictly against the OpenAPI schema of the
version the deployment targets (placement.K8S_VERSION)."""

import copy
import importlib.metadata
import importlib.util
import os
import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from quant_assets.placement.kubernetes import K8S_VERSION
from quant_assets.placement.policy import POOL_LABEL, load_policy

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
MLFLOW_SECRET = "quant-assets-mlflow"  # MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD
PROXY_SECRET = "quant-dagster-oauth2-proxy"
PROXIES = {  # oauth2-proxy Deployment -> the webserver Service it fronts
    "quant-dagster-auth": "quant-dagster-webserver",
    "quant-dagster-auth-read-only": "quant-dagster-webserver-read-only",
}
IMAGES = ["quant-features", "quant-train-cpu", "quant-train-cu12", "quant-backtest", "quant-serve"]
# env vars deploy/dagster.yaml reads (what the chart / the host provides)
INSTANCE_ENV = {
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "secret",
    "DAGSTER_PG_HOST": "postgres.example",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_COMPUTE_LOG_BUCKET": "quant-dagster-logs",
}


@pytest.fixture(scope="module")
def values():
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


@pytest.fixture(scope="module")
def instance_yaml():
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


def _manifest(values, kind, name):
    found = [m for m in values["extraManifests"] if m["kind"] == kind
             and m["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def _user_deployment(values):
    deployments = values["dagster-user-deployments"]["deployments"]
    assert len(deployments) == 1
    return deployments[0]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.split("[")[0]).lower().strip()


# ---------------------------------------------------------------------------------------------
# Helm values


def test_user_code_deployment_serves_this_code_location(values):
    ud = values["dagster-user-deployments"]
    assert ud["enabled"] is True and ud["enableSubchart"] is True
    dep = _user_deployment(values)
    args = dep["dagsterApiGrpcArgs"]
    assert args[:2] == ["-m", "quant_assets.definitions"]
    assert importlib.util.find_spec(args[1]) is not None
    assert dep["image"]["repository"].endswith("/quant-features")
    assert dep["image"]["tag"] not in ("", "latest")
    assert {"name": "QUANT_ENV", "value": "k8s"} in dep["env"]
    assert {"name": "quant-assets-env"} in dep["envConfigMaps"]
    assert {"name": "quant-assets-aws"} in dep["envSecrets"]
    assert {"name": MLFLOW_SECRET} in dep["envSecrets"]
    assert dep["includeConfigInLaunchedRuns"]["enabled"] is True


def test_dagster_system_images_match_the_installed_dagster(values):
    version = importlib.metadata.version("dagster")
    for part in ("dagsterWebserver", "dagsterDaemon"):
        assert values[part]["image"]["tag"] == version, part


def test_run_launcher_and_executor_run_in_kubernetes(values, monkeypatch):
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    cfg = launcher["config"]["k8sRunLauncher"]
    assert "QUANT_ENV=k8s" in cfg["envVars"]
    assert {"name": "quant-assets-env"} in cfg["envConfigMaps"]
    # the ConfigMap gives valid settings that select the Kubernetes executor
    env = _manifest(values, "ConfigMap", "quant-assets-env")["data"]
    assert env["QUANT_ENV"] == "k8s"
    assert env["QUANT_WAREHOUSE_URI"].startswith("s3://")
    assert re.fullmatch(r"http://mlflow[\w.-]*:5000", env["QUANT_MLFLOW_URI"])
    assert all(isinstance(v, str) for v in env.values())  # ConfigMap data must be strings
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from quant_assets.placement.apply import executor_for
    from quant_assets.settings import Settings

    settings = Settings.from_env()
    assert settings.env == "k8s" and settings.end_date is None
    assert settings.warehouse_uri == env["QUANT_WAREHOUSE_URI"]
    assert executor_for(settings.env).name == "k8s"


def test_postgres_is_external_with_an_existing_secret(values):
    assert values["postgresql"]["enabled"] is False
    assert values["postgresql"]["postgresqlHost"]
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    assert values["global"]["postgresqlSecretName"] == "dagster-postgresql-secret"
    assert values["generatePostgresqlPasswordSecret"] is False
    assert not values["postgresql"]["postgresqlPassword"]  # never a password in values


def test_queue_limits_and_compute_logs_match_the_instance_file(values, instance_yaml):
    queue = values["dagsterDaemon"]["runCoordinator"]
    assert queue["enabled"] is True and queue["type"] == "QueuedRunCoordinator"
    qcfg = queue["config"]["queuedRunCoordinator"]
    runs = instance_yaml["concurrency"]["runs"]
    assert qcfg["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert qcfg["tagConcurrencyLimits"] == runs["tag_concurrency_limits"]
    logs = values["computeLogManager"]
    assert logs["type"] == "S3ComputeLogManager"
    helm_logs = logs["config"]["s3ComputeLogManager"]
    file_logs = instance_yaml["compute_logs"]["config"]
    for helm_key, file_key in (("prefix", "prefix"), ("localDir", "local_dir"),
                               ("uploadInterval", "upload_interval"),
                               ("skipEmptyFiles", "skip_empty_files")):
        assert helm_logs[helm_key] == file_logs[file_key], helm_key
    assert helm_logs["localDir"].startswith("/tmp/")  # writable under a read-only root


def test_every_pool_has_a_cluster_limit_and_system_pods_land_on_a_pool(values):
    policy = load_policy()
    job = _manifest(values, "Job", "quant-assets-pool-limits")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    limits = {pool: int(limit) for pool, limit in
              re.findall(r"dagster instance concurrency set ([a-z0-9-]+) (\d+)", script)}
    assert set(limits) == set(policy.pools), "every pool of pools.yaml needs a cluster limit"
    assert all(limit >= 1 for limit in limits.values())
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    image = _user_deployment(values)["image"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{image['repository']}:{image['tag']}"
    selectors = [
        values["dagsterWebserver"].get("nodeSelector"),
        values["dagsterDaemon"]["nodeSelector"],
        _user_deployment(values)["nodeSelector"],
        values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"][
            "nodeSelector"],
        job["spec"]["template"]["spec"]["nodeSelector"],
    ]
    for selector in filter(None, selectors):
        assert selector[POOL_LABEL] in policy.pools


def _security_blocks(values):
    """(where, pod security context, container security context, volumes, mounts) of every
    pod this deployment runs."""
    ud = _user_deployment(values)
    rl = values["runLauncher"]["config"]["k8sRunLauncher"]
    job = _manifest(values, "Job", "quant-assets-pool-limits")["spec"]["template"]["spec"]
    return [
        ("webserver", values["dagsterWebserver"]["podSecurityContext"],
         values["dagsterWebserver"]["securityContext"], values["dagsterWebserver"]["volumes"],
         values["dagsterWebserver"]["volumeMounts"]),
        ("daemon", values["dagsterDaemon"]["podSecurityContext"],
         values["dagsterDaemon"]["securityContext"], values["dagsterDaemon"]["volumes"],
         values["dagsterDaemon"]["volumeMounts"]),
        ("user code", ud["podSecurityContext"], ud["securityContext"], ud["volumes"],
         ud["volumeMounts"]),
        ("run worker", rl["runK8sConfig"]["podSpecConfig"]["securityContext"],
         rl["securityContext"], rl["volumes"], rl["volumeMounts"]),
        ("pool limits", job["securityContext"], job["containers"][0]["securityContext"],
         job["volumes"], job["containers"][0]["volumeMounts"]),
        *[(f"proxy {name}", spec["securityContext"], spec["containers"][0]["securityContext"],
           spec["volumes"], spec["containers"][0]["volumeMounts"])
          for name in PROXIES
          for spec in [_manifest(values, "Deployment", name)["spec"]["template"]["spec"]]],
    ]


def test_every_pod_runs_as_non_root_with_a_read_only_root(values):
    for where, pod_sc, container_sc, volumes, mounts in _security_blocks(values):
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0, where
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert container_sc["readOnlyRootFilesystem"] is True, where
        assert container_sc["allowPrivilegeEscalation"] is False, where
        assert container_sc["capabilities"]["drop"] == ["ALL"], where
        # what the images write at run time goes to /tmp: it must be a volume
        tmp = [m for m in mounts if m["mountPath"] == "/tmp"]
        assert tmp and tmp[0]["name"] in {v["name"] for v in volumes}, where
        # as a real Pod, strictly valid for the target Kubernetes version
        pod = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
            "spec": {
                "securityContext": pod_sc, "volumes": volumes,
                "containers": [{"name": "c", "image": "quant-features:0.1.0",
                                "securityContext": container_sc, "volumeMounts": mounts}],
            },
        }
        kubernetes_validate.validate(copy.deepcopy(pod), K8S_VERSION, strict=True)


def test_images_run_as_the_user_the_pods_require(values):
    # the project's pods (not the chart's Dagster images) run the images' own user
    ours = [b for b in _security_blocks(values) if b[0] not in ("webserver", "daemon")
            and not b[0].startswith("proxy ")]
    uids = {pod_sc["runAsUser"] for _, pod_sc, *_ in ours}
    for name in IMAGES:
        user = _dockerfile(name)["user"]
        assert uids == {int(user.split(":")[0])}, (name, user, uids)


def test_extra_manifests_are_valid_kubernetes_objects(values):
    kinds = []
    for manifest in values["extraManifests"]:
        kubernetes_validate.validate(copy.deepcopy(manifest), K8S_VERSION, strict=True)
        kinds.append(manifest["kind"])
    assert sorted(kinds) == ["ConfigMap", "Deployment", "Deployment", "Ingress", "Job",
                             "NetworkPolicy", "Role", "RoleBinding", "Service", "Service"]
    with pytest.raises(kubernetes_validate.ValidationError):
        broken = copy.deepcopy(_manifest(values, "Role", "quant-assets"))
        broken["rules"][0]["verb"] = broken["rules"][0].pop("verbs")
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_rbac_is_least_privilege(values):
    assert values["rbacEnabled"] is False  # the chart's broader Role is replaced by ours
    sa = values["serviceAccount"]["name"]
    assert values["global"]["serviceAccountName"] == sa
    role = _manifest(values, "Role", "quant-assets")
    binding = _manifest(values, "RoleBinding", "quant-assets")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa}]
    allowed = {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("batch", "jobs/status"): {"get", "list", "watch"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
        ("", "events"): {"get", "list", "watch"},
    }
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "*" not in rule["apiGroups"] and not rule.get("resourceNames")
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                granted.setdefault((group, res), set()).update(rule["verbs"])
    for key, verbs in granted.items():
        assert key in allowed, f"unexpected grant {key}"
        assert verbs <= allowed[key], (key, verbs - allowed[key])
    assert ("", "secrets") not in granted
    assert ("batch", "jobs") in granted and "create" in granted[("batch", "jobs")]


def _env_secrets(values) -> dict[str, list[dict]]:
    """envSecrets (envFrom secretRef) of every place that runs the platform's code."""
    return {
        "code location": _user_deployment(values)["envSecrets"],
        "runs and steps": values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"],
    }


def test_mlflow_credentials_come_from_a_secret(values):
    # the code location, the run workers and their step Jobs get MLFLOW_TRACKING_USERNAME /
    # MLFLOW_TRACKING_PASSWORD from the Secret, which exists outside the chart
    for where, secrets in _env_secrets(values).items():
        assert {"name": MLFLOW_SECRET} in secrets, where
    # the webserver and the daemon run no asset code: they need no MLflow credentials
    for part in ("dagsterWebserver", "dagsterDaemon"):
        assert {"name": MLFLOW_SECRET} not in values[part].get("envSecrets", []), part
    assert not any(m["kind"] == "Secret" for m in values["extraManifests"])
    # nothing else sets them: not the ConfigMap, not a literal env var
    config = _manifest(values, "ConfigMap", "quant-assets-env")["data"]
    dep = _user_deployment(values)
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    literal = [*config, *(e["name"] for e in dep.get("env", []) if "value" in e),
               *(v.split("=", 1)[0] for v in launcher.get("envVars", []))]
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_TRACKING_TOKEN"):
        assert name not in literal, name


def test_webservers_are_reached_only_through_the_authenticating_proxies(values):
    # the OSS webserver has no authentication: a read-only one for researchers, and no route
    # to either but through an oauth2-proxy
    web = values["dagsterWebserver"]
    assert web["enableReadOnly"] is True
    assert values["ingress"]["enabled"] is False  # the chart's Ingress would bypass the proxy
    ingresses = [m for m in values["extraManifests"] if m["kind"] == "Ingress"]
    backends = {path["backend"]["service"]["name"]
                for ingress in ingresses for rule in ingress["spec"]["rules"]
                for path in rule["http"]["paths"]}
    assert backends == set(PROXIES)
    assert all(rule["host"] for ingress in ingresses for rule in ingress["spec"]["rules"])
    assert all(ingress["spec"]["tls"] for ingress in ingresses)
    groups = {}
    for name, webserver in PROXIES.items():
        deployment = _manifest(values, "Deployment", name)
        service = _manifest(values, "Service", name)
        pod = deployment["spec"]["template"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
        container = pod["spec"]["containers"][0]
        assert container["image"].startswith("quay.io/oauth2-proxy/oauth2-proxy:v")
        args = dict(a.removeprefix("--").split("=", 1) for a in container["args"]
                    if "=" in a and not a.startswith("--allowed-group"))
        assert args["upstream"] == f"http://{webserver}:80"
        assert args["provider"] == "oidc" and args["oidc-issuer-url"].startswith("https://")
        assert args["email-domain"] == "*" and args["cookie-secure"] == "true"
        groups[name] = {a.split("=", 1)[1] for a in container["args"]
                        if a.startswith("--allowed-group=")}
        assert groups[name], f"{name} lets every signed-in user through"
        # the OIDC client and the cookie secret by reference only
        env = {e["name"]: e for e in container["env"]}
        for var, key in (("OAUTH2_PROXY_CLIENT_ID", "client-id"),
                         ("OAUTH2_PROXY_CLIENT_SECRET", "client-secret"),
                         ("OAUTH2_PROXY_COOKIE_SECRET", "cookie-secret")):
            assert env[var]["valueFrom"]["secretKeyRef"] == {"name": PROXY_SECRET, "key": key}
            assert "value" not in env[var]
        assert not any("secret" in a.lower() for a in container["args"])
    # only operators reach the writable webserver
    assert groups["quant-dagster-auth"] == {"quant-operators"}
    assert groups["quant-dagster-auth"] < groups["quant-dagster-auth-read-only"]
    # in the cluster, the webservers' pods accept connections from the proxies' pods only
    policy = _manifest(values, "NetworkPolicy", "quant-dagster-webserver")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= web["labels"].items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    for name in PROXIES:
        labels = _manifest(values, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert peer["podSelector"]["matchLabels"].items() <= labels.items()
    assert not (peer["podSelector"]["matchLabels"].items() <= web["labels"].items())


# a key that names a credential, and what may stand as its value in a deploy file
_SECRET_KEY = re.compile(
    r"(?i)(password|passwd|client[_-]?secret|cookie[_-]?secret|secret[_-]?(access[_-]?)?key"
    r"|token|api[_-]?key)"
)
# ...unless the key names where the credential is (passwordSecretName, tokenFile, passwordKey)
_NOT_A_VALUE = re.compile(r"([Nn]ame|[Ff]ile|[Pp]ath|Ref|Key|Keys|[Dd]ir|[Mm]ount\w*)$")
_ALLOWED_VALUE = re.compile(r"^(|~|\$\{?\w+\}?|<[^>]+>|\{\{.*\}\})$")
# `password=...`, `--password ...`, `PASSWORD: ...` written out in a text (Dockerfile, script)
_LITERAL = re.compile(
    r"(?i)\b[\w-]*(password|passwd|secret[_-]?key|client[_-]?secret|cookie[_-]?secret|token)"
    r"[\w-]*\s*(=|:)\s*['\"]?(?![$<{'\"\s])([^\s'\"]{6,})"
)


def _scalars(node, path=()):
    """(path, key, value) of every scalar in a YAML document."""
    if isinstance(node, dict):
        if set(node) >= {"name", "value"}:  # an env var: {name: X_PASSWORD, value: ...}
            yield path, str(node["name"]), node["value"]
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                yield from _scalars(value, (*path, str(key)))
            else:
                yield path, str(key), value
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, (dict, list)):
                yield from _scalars(item, path)
            else:
                yield path[:-1], path[-1] if path else "", item


def _secret_values(doc) -> list[str]:
    """Where a YAML document gives a credential a value (rather than a reference to one)."""
    found = []
    for where, key, value in _scalars(doc):
        shown = "/".join((*where, key))
        if _SECRET_KEY.search(key) and not _NOT_A_VALUE.search(key):
            if not (value is None or isinstance(value, bool)
                    or _ALLOWED_VALUE.match(str(value))):
                found.append(shown)
        # `KEY=value` list items (envVars) and flags (`--client-secret=...`)
        if isinstance(value, str) and _LITERAL.search(value):
            found.append(f"{shown}: {value}")
    return found


def test_no_secret_value_in_the_deploy_files():
    """Secrets come from the environment or a Kubernetes Secret, never from the repository: no
    credential-named setting of a deploy file has a value, only references to one."""
    checked = 0
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file() or path.suffix in (".json",):
            continue
        text = path.read_text()
        if path.suffix in (".yaml", ".yml") and "{{" not in text:
            for doc in yaml.safe_load_all(text):
                assert not _secret_values(doc), f"{path.relative_to(REPO)}: {_secret_values(doc)}"
        else:
            for line in text.splitlines():
                if line.lstrip().startswith("#"):
                    continue
                found = _LITERAL.search(line)
                assert not found, f"{path.relative_to(REPO)}: {line.strip()}"
        checked += 1
    assert checked >= 5
    # the check itself finds what it looks for
    assert _secret_values({"env": [{"name": "MLFLOW_TRACKING_PASSWORD", "value": "abc"}]})
    assert _secret_values({"postgresql": {"postgresqlPassword": "abc"}})
    assert _secret_values({"data": {"AWS_SECRET_ACCESS_KEY": "abc"}})
    assert _secret_values({"envVars": ["MLFLOW_TRACKING_PASSWORD=abcdefgh"]})
    assert not _secret_values({"postgresqlPassword": "", "passwordSecretName": "pg",
                               "secretKeyRef": {"name": "s", "key": "mlflow-password"},
                               "env": [{"name": "X_PASSWORD", "valueFrom": {}}]})
    assert _LITERAL.search("--client-secret=abcdef123456")
    assert _LITERAL.search('ENV MLFLOW_TRACKING_PASSWORD="hunter2hunter2"')
    assert not _LITERAL.search('MLFLOW_TRACKING_PASSWORD="$QUANT_MLFLOW_PASSWORD"')
    assert not _LITERAL.search("key: mlflow-password")


# ---------------------------------------------------------------------------------------------
# deploy/dagster.yaml


def test_instance_file_is_valid_for_dagster(tmp_path, monkeypatch, instance_yaml):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

    for key, value in INSTANCE_ENV.items():
        monkeypatch.setenv(key, value)
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    db = config["storage"]["postgres"]["postgres_db"]
    assert db["scheme"] == "postgresql+psycopg2"
    # every credential is an env reference, resolved only at load time
    raw_db = instance_yaml["storage"]["postgres"]["postgres_db"]
    for key in ("username", "password", "hostname", "db_name", "port"):
        assert set(raw_db[key]) == {"env"}, key
    assert config["compute_logs"]["class"] == "S3ComputeLogManager"
    logs = process_config(S3ComputeLogManager.config_type(), config["compute_logs"]["config"])
    assert logs.success, logs.errors
    assert logs.value["bucket"] == INSTANCE_ENV["DAGSTER_COMPUTE_LOG_BUCKET"]
    assert config["concurrency"]["pools"]["granularity"] == "op"
    # the demo and configure_local_instance merge pool settings into this file: still valid
    from quant_assets.placement.apply import write_local_concurrency_config

    write_local_concurrency_config(tmp_path)
    dagster_instance_config(str(tmp_path))


def test_instance_storage_resolves_env_and_rejects_a_missing_secret(monkeypatch, instance_yaml):
    from dagster._config import process_config
    from dagster._core.storage.config import pg_config

    for key, value in INSTANCE_ENV.items():
        monkeypatch.setenv(key, value)
    storage = instance_yaml["storage"]["postgres"]
    resolved = process_config(pg_config(), storage)
    assert resolved.success, resolved.errors
    assert resolved.value["postgres_db"]["port"] == 5432  # IntSource from the env
    assert resolved.value["postgres_db"]["password"] == "secret"
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    missing = process_config(pg_config(), storage)
    assert not missing.success
    assert "DAGSTER_PG_PASSWORD" in missing.errors[0].message


def test_instance_storage_url(monkeypatch, instance_yaml):
    """The URL dagster-postgres builds from the file (its own function where installed)."""
    dp = pytest.importorskip("dagster_postgres.utils")
    for key, value in INSTANCE_ENV.items():
        monkeypatch.setenv(key, value)
    raw = instance_yaml["storage"]["postgres"]["postgres_db"]
    resolved = {k: os.environ[v["env"]] if isinstance(v, dict) and set(v) == {"env"} else v
                for k, v in raw.items()}
    url = dp.pg_url_from_config({"postgres_db": resolved})
    assert url.startswith("postgresql+psycopg2://dagster:secret@postgres.example:5432/dagster?")
    assert "connect_timeout=10" in url


# ---------------------------------------------------------------------------------------------
# Dockerfiles


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        op, _, rest = buf.partition(" ")
        out.append((op.upper(), rest.strip()))
        buf = ""
    assert not buf, "dangling line continuation"
    return out


def _dockerfile(name: str) -> dict:
    path = DEPLOY / "docker" / f"{name}.Dockerfile"
    instr = _instructions(path.read_text())
    args = {}
    for op, rest in instr:
        if op == "ARG" and "=" in rest:
            key, _, default = rest.partition("=")
            args[key] = default.strip('"')
    froms = [rest.split()[0] for op, rest in instr if op == "FROM"]
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), f)
             for f in froms]
    users = [rest for op, rest in instr if op == "USER"]
    pip = [rest for op, rest in instr if op == "RUN" and "pip install" in rest]
    return {"instr": instr, "from": froms, "user": users[-1] if users else None,
            "pip": pip, "text": path.read_text()}


def _pip_requirements(run: str) -> list[str]:
    """The requirement arguments of every `pip install` in one RUN line."""
    reqs = []
    for command in re.split(r"&&|;", run):
        words = command.split()
        if words[:2] != ["pip", "install"] and words[1:3] != ["-m", "pip"]:
            continue
        skip_next = False
        for word in words[2:]:
            if skip_next:
                skip_next = False
                continue
            if word in ("-c", "-r", "--index-url", "--extra-index-url", "-f"):
                skip_next = True
                continue
            if word.startswith("-") or word == "install":
                continue
            reqs.append(word)
    return reqs


@pytest.mark.parametrize("name", IMAGES)
def test_dockerfile_pins_base_and_packages_and_drops_root(name):
    df = _dockerfile(name)
    lock = _lock()
    assert df["from"], name
    for base in df["from"]:
        # an exact patch release (or a digest), never a floating tag
        assert re.search(r":\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$", base) or (
            "@sha256:" in base), base
        assert "latest" not in base
        assert base.startswith("python:3.11."), base  # requires-python = 3.11
    reqs = [r for run in df["pip"] for r in _pip_requirements(run)]
    assert reqs, "no pip install"
    for req in reqs:
        assert "==" in req, f"{name}: unpinned {req!r}"
        pkg, version = req.split("==")
        if _norm(pkg) == "torch":
            assert version.split("+")[0] == lock["torch"], req
        elif _norm(pkg) in lock:
            assert version == lock[_norm(pkg)], f"{name}: {req} but the lock has {lock[_norm(pkg)]}"
        else:
            # not in the lock yet (dagster-postgres): the dagster-k8s release train
            assert version == lock["dagster-k8s"], req
    # the project's dependencies are installed with the lock as constraints
    assert any("-c requirements.lock" in run for run in df["pip"])
    # non-root: a numeric uid (runAsNonRoot can check it), created in the image
    user = df["user"]
    assert user and re.fullmatch(r"\d+(:\d+)?", user), user
    uid = int(user.split(":")[0])
    assert uid != 0
    assert f"--uid {uid}" in df["text"]
    last_from = max(i for i, (op, _) in enumerate(df["instr"]) if op == "FROM")
    last_user = max(i for i, (op, _) in enumerate(df["instr"]) if op == "USER")
    assert last_user > last_from, "USER must be set in the final stage"
    # placement reads deploy/pools.yaml next to the package at run time
    assert any(op == "COPY" and "deploy/pools.yaml" in rest for op, rest in df["instr"])


def test_torch_builds():
    for name in IMAGES:
        text = _dockerfile(name)["text"]
        if name == "quant-train-cu12":
            assert re.search(r"torch==[\d.]+\+cu12\d", text)
            assert "download.pytorch.org/whl/cu12" in text
        else:
            assert re.search(r"torch==[\d.]+\+cpu", text)
            assert "download.pytorch.org/whl/cpu" in text


def test_gpu_pool_uses_the_cuda_image():
    gpu = load_policy().pools["gpu"]
    assert gpu.image and gpu.image.split("/")[-1].split(":")[0] == "quant-train-cu12"
    for pool in load_policy().pools.values():
        if pool.image:
            assert pool.image.split("/")[-1].split(":")[0] in IMAGES
