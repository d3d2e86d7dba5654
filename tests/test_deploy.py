"""The deployment files, checked offline: the systemd unit, the Dockerfile (hadolint-like rules
through dockerfile-parse), the .dockerignore, and the Kubernetes manifests (core kinds against
the Kubernetes OpenAPI schemas with kubernetes-validate; KEDA objects structurally). The config
in the ConfigMap must load with sender's own ``load_config``, and the files must agree with each
other (ports, paths, user ids, names, grace periods)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import orjson
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from sender.config import AppConfig, DaemonConfig, load_config
from sender.units import parse_duration

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "sender.service"
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
KUBERNETES_VERSION = "1.30.0"  # the oldest version we promise to run on

# -- systemd --------------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (keys may repeat, as systemd allows)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return unit_settings(UNIT)


def one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key)
    assert values, f"{key}= is missing"
    return values[-1]


def test_the_unit_waits_for_ready_and_restarts_on_failure(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    service = unit["Service"]
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert one(service, "Restart") == "on-failure"
    assert parse_duration(one(service, "WatchdogSec")) > 0
    assert one(service, "ExecStart") == "/usr/bin/env sender run -c /etc/sender/sender.toml"
    assert one(unit["Install"], "WantedBy") == "multi-user.target"


def test_the_unit_stops_with_sigterm_and_outlasts_the_shutdown_grace(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    service = unit["Service"]
    assert one(service, "KillSignal") == "SIGTERM"
    grace = DaemonConfig().shutdown_grace_s
    assert parse_duration(one(service, "TimeoutStopSec")) > grace
    # the watchdog must not fire while a long drain is legitimately under way
    assert parse_duration(one(service, "WatchdogSec")) > grace


def test_the_unit_is_hardened(unit: dict[str, dict[str, list[str]]]) -> None:
    service = unit["Service"]
    assert one(service, "DynamicUser") == "yes" or one(service, "User") == "sender"
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "StateDirectory") == "sender"
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "ProtectHome") == "yes"
    assert one(service, "PrivateTmp") == "yes"
    assert one(service, "CapabilityBoundingSet") == ""


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_itself_accepts_the_unit_and_rates_it_well() -> None:
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr
    # warnings (unknown keys, bad values) only go to stderr; ExecStart's binary is not
    # installed here, which is the one complaint allowed
    complaints = [
        line
        for line in verify.stderr.splitlines()
        if UNIT.name in line and "is not executable" not in line and "not found" not in line
    ]
    assert complaints == []
    # exposure 0-10 scaled by 10: 20 means "2.0", systemd's "OK" band
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert security.returncode == 0, security.stdout[-2000:]


# -- Dockerfile -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILE))


def stages(parser: DockerfileParser) -> list[list[dict[str, Any]]]:
    """The instructions of each build stage, in order (comments dropped)."""
    out: list[list[dict[str, Any]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            out.append([])
        if out and instruction["instruction"] != "COMMENT":
            out[-1].append(instruction)
    return out


def values(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


_COMPILERS = re.compile(
    r"\b(gcc|g\+\+|clang|cc|make|build-essential|python3?-dev|libc6?-dev|musl-dev|cargo|rustc)\b"
)


def test_the_image_is_built_in_two_stages_on_a_pinned_slim_base(
    dockerfile: DockerfileParser,
) -> None:
    build, *_ = stages(dockerfile)
    assert dockerfile.is_multistage
    assert re.search(r"\bAS build$", build[0]["value"], re.IGNORECASE)
    for image in dockerfile.parent_images:
        name, _, tag = image.partition(":")
        assert "@sha256:" in image or re.fullmatch(r"\d+\.\d+\.\d+-slim(-\w+)?", tag), (
            f"{image}: pin the base image to a full version (or a digest), never 'latest'"
        )
        assert name == "python"
    assert values(build, "RUN") and any("pip wheel" in run for run in values(build, "RUN"))


def test_the_final_stage_installs_the_build_stages_wheels_without_a_compiler(
    dockerfile: DockerfileParser,
) -> None:
    *_, final = stages(dockerfile)
    runs = values(final, "RUN")
    copies = values(final, "COPY")
    from_build = [c for c in copies if c.startswith("--from=build") and "/wheels" in c]
    mounted = [r for r in runs if re.search(r"--mount=\S*from=build\S*/wheels", r)]
    assert from_build or mounted, "the final stage must take its wheels from the build stage"
    installs = [r for r in runs if "pip install" in r]
    assert installs and all("--no-index" in r and "--find-links" in r for r in installs)
    for run in runs:
        if re.search(r"\b(apt-get|apt|apk|yum|dnf)\b.*\binstall\b", run):
            assert not _COMPILERS.search(run), f"compiler in the final image: {run}"
    assert not values(final, "ADD"), "use COPY for local files"


def test_every_pip_call_skips_its_cache(dockerfile: DockerfileParser) -> None:
    pip_calls = [
        i["value"]
        for i in dockerfile.structure
        if i["instruction"] == "RUN" and re.search(r"\bpip3? (install|wheel)\b", i["value"])
    ]
    assert pip_calls
    for call in pip_calls:
        for part in re.split(r"&&|;", call):
            if re.search(r"\bpip3? (install|wheel)\b", part):
                assert "--no-cache-dir" in part, part


def test_apt_calls_follow_the_usual_rules(dockerfile: DockerfileParser) -> None:
    for run in (i["value"] for i in dockerfile.structure if i["instruction"] == "RUN"):
        if re.search(r"\bapt-get\b.*\binstall\b", run):
            assert "--no-install-recommends" in run and "-y" in run
            assert "rm -rf /var/lib/apt/lists" in run
        assert not re.search(r"\bapt\b\s+install", run), "use apt-get in scripts"


def test_the_image_runs_sender_run_as_a_non_root_user(dockerfile: DockerfileParser) -> None:
    *_, final = stages(dockerfile)
    users = values(final, "USER")
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric USER lets Kubernetes verify runAsNonRoot"
    assert orjson.loads(values(final, "ENTRYPOINT")[-1]) == ["sender"]
    assert orjson.loads(values(final, "CMD")[-1]) == ["run"]


def test_the_image_checks_its_health_on_healthz(dockerfile: DockerfileParser) -> None:
    *_, final = stages(dockerfile)
    (check,) = values(final, "HEALTHCHECK")
    assert "/healthz" in check
    assert "--interval=" in check and "--timeout=" in check
    port = dockerfile.envs.get("SENDER_HEALTH_PORT")
    assert port in values(final, "EXPOSE")


def test_the_image_installs_extras_that_pyproject_declares(dockerfile: DockerfileParser) -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for run in (i["value"] for i in dockerfile.structure if i["instruction"] == "RUN"):
        for used in re.findall(r"\[([\w,]+)\]'", run):
            assert set(used.split(",")) <= set(extras), run


# -- .dockerignore ----------------------------------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out = out[:-2] + "(?:.*/)?"
                i += 1
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignored(path: str, rules: list[str]) -> bool:
    """Docker's .dockerignore semantics: the last matching rule wins; a rule matching a
    folder matches everything inside it; ``!`` re-includes."""
    ignored = False
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for rule in rules:
        negate = rule.startswith("!")
        pattern = _pattern(rule.lstrip("!").strip("/"))
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def ignore_rules() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_build_context_has_what_the_dockerfile_copies(
    dockerfile: DockerfileParser, ignore_rules: list[str]
) -> None:
    for copy in (i["value"] for i in dockerfile.structure if i["instruction"] == "COPY"):
        args = [a for a in shlex.split(copy) if not a.startswith("--")]
        if copy.startswith("--from="):
            continue
        for source in args[:-1]:
            assert (ROOT / source).exists(), source
            files = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*.*")
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                if "__pycache__" in relative:
                    continue
                assert not dockerignored(relative, ignore_rules), f"{relative} is ignored"


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "tests/test_deploy.py",
        "var/ledger.db",
        "bench/data/x.jsonl",
        "sender/__pycache__/engine.cpython-311.pyc",
        "integration_sender.egg-info/PKG-INFO",
        "deploy/k8s/secret.example.yaml",
    ],
)
def test_the_build_context_leaves_out_what_the_image_does_not_need(
    path: str, ignore_rules: list[str]
) -> None:
    assert dockerignored(path, ignore_rules)


# -- Kubernetes -------------------------------------------------------------------------------


def documents(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as file:
        yield from (doc for doc in yaml.safe_load_all(file) if doc)


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, from every YAML file in deploy/k8s."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in documents(path):
            key = (doc["kind"], doc.get("metadata", {}).get("name", path.name))
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


_CORE_KINDS = {
    "ConfigMap",
    "Deployment",
    "PodDisruptionBudget",
    "Secret",
    "Service",
    "ServiceAccount",
}


def test_core_objects_match_the_kubernetes_schemas(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    kinds = {kind for kind, _ in manifests}
    assert kinds >= _CORE_KINDS
    for (kind, name), doc in manifests.items():
        if kind in _CORE_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        else:
            assert kind in {"ScaledObject", "TriggerAuthentication", "Kustomization"}, name


def test_the_schema_check_would_catch_a_typo(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    broken = yaml.safe_load(yaml.safe_dump(manifests["Deployment", "sender"]))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_files_that_exist() -> None:
    (kustomization,) = documents(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"]  # never apply placeholders


@pytest.fixture(scope="module")
def deployment(manifests: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return manifests["Deployment", "sender"]


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return main


@pytest.fixture
def k8s_config(
    manifests: dict[tuple[str, str], dict[str, Any]],
    container: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AppConfig:
    """The ConfigMap's config loaded as the pod loads it: the config and the Secret's files
    laid out as the Deployment mounts them, the container's environment set."""
    pod_spec = next(d for d in manifests.values() if d["kind"] == "Deployment")["spec"]
    volumes = {v["name"]: v for v in pod_spec["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config_map = manifests["ConfigMap", volumes["config"]["configMap"]["name"]]
    secret = manifests["Secret", volumes["secrets"]["secret"]["secretName"]]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    root = tmp_path / "pod"

    def inside(path: str) -> Path:
        return root / path.lstrip("/")

    for key, text in config_map["data"].items():
        inside(mounts["config"]).mkdir(parents=True, exist_ok=True)
        (inside(mounts["config"]) / key).write_text(text)
    for key, text in secret["stringData"].items():
        inside(mounts["secrets"]).mkdir(parents=True, exist_ok=True)
        (inside(mounts["secrets"]) / key).write_text(text + "\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_config(inside(env["SENDER_CONFIG"]))


def test_the_configmap_holds_a_config_sender_accepts(k8s_config: AppConfig) -> None:
    assert k8s_config.daemon.ledger.startswith("postgresql://")  # replicas share one ledger
    assert k8s_config.daemon.host == "0.0.0.0"  # probes come from the kubelet
    assert k8s_config.trigger.type == "amqp"
    for name, section in k8s_config.destinations.items():
        assert section.type != "local", f"{name}: a pod's disk does not outlive the pod"


def test_config_secrets_are_files_from_the_secret(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    text = manifests["ConfigMap", "sender-config"]["data"]["sender.toml"]
    used = set(re.findall(r"\$\{file:\.\./secrets/([\w.-]+)\}", text))
    assert used == set(manifests["Secret", "sender-secrets"]["stringData"])
    assert not re.findall(r"\$\{(?!file:)[^}:]+\}", text), "environment variables without default"


def test_the_pod_outlasts_the_shutdown_grace(
    deployment: dict[str, Any], k8s_config: AppConfig
) -> None:
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > k8s_config.daemon.shutdown_grace_s + 5


def test_probes_hit_healthz_and_readyz_on_the_control_port(
    container: dict[str, Any], k8s_config: AppConfig
) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == k8s_config.daemon.port


def test_the_container_is_locked_down_with_writable_tmp_and_var(
    deployment: dict[str, Any], container: dict[str, Any], dockerfile: DockerfileParser
) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    *_, final = stages(dockerfile)
    image_uid = int(values(final, "USER")[-1].split(":")[0])
    assert pod["securityContext"]["runAsUser"] == image_uid
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {
        m["mountPath"] for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]
    }
    assert {"/tmp", values(final, "WORKDIR")[-1]} <= writable
    assert pod["automountServiceAccountToken"] is False


def test_the_container_declares_resources_and_a_pinned_image(container: dict[str, Any]) -> None:
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    image, _, tag = container["image"].rpartition(":")
    assert image and tag and tag != "latest"
    assert container["args"] == ["run"]


def test_service_and_budget_select_the_pods(
    manifests: dict[tuple[str, str], dict[str, Any]],
    deployment: dict[str, Any],
    container: dict[str, Any],
) -> None:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = manifests["Service", "sender"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    budget = manifests["PodDisruptionBudget", "sender"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"].get("maxUnavailable") == 1 or budget["spec"].get("minAvailable")


# -- KEDA -------------------------------------------------------------------------------------

# The parts of KEDA's CRDs (keda.sh/v1alpha1) these examples use, with their types: enough to
# catch a misspelt key or a number where KEDA wants a string.
_SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {"type": "object"},
                            },
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {"enum": ["TriggerAuthentication"]},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
_TRIGGER_AUTHENTICATION = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "spec": {
            "type": "object",
            "minProperties": 1,
            "properties": {
                "podIdentity": {
                    "type": "object",
                    "required": ["provider"],
                    "properties": {
                        "provider": {"enum": ["aws", "aws-eks", "azure-workload", "gcp", "none"]}
                    },
                },
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": False,
                        "properties": {
                            "parameter": {"type": "string"},
                            "name": {"type": "string"},
                            "key": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}
# metadata each scaler needs (from KEDA's scaler docs)
_REQUIRED_METADATA = {
    "rabbitmq": {"queueName", "mode", "value"},
    "aws-sqs-queue": {"queueURL", "queueLength", "awsRegion"},
}


@pytest.mark.parametrize(
    ("file", "scaler"), [("keda-rabbitmq.yaml", "rabbitmq"), ("keda-sqs.yaml", "aws-sqs-queue")]
)
def test_keda_scaled_objects_are_well_formed_and_target_the_deployment(
    file: str, scaler: str, deployment: dict[str, Any], k8s_config: AppConfig
) -> None:
    docs = list(documents(K8S / file))
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    auths = {d["metadata"]["name"]: d for d in docs if d["kind"] == "TriggerAuthentication"}
    assert len(scaled) == 1
    (obj,) = scaled
    jsonschema.validate(obj, _SCALED_OBJECT)
    for auth in auths.values():
        jsonschema.validate(auth, _TRIGGER_AUTHENTICATION)
    spec = obj["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert deployment["spec"]["replicas"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == scaler
    metadata = trigger["metadata"]
    assert _REQUIRED_METADATA[scaler] <= set(metadata)
    assert trigger["authenticationRef"]["name"] in auths
    # one queued batch per free slot: the target per replica is daemon.max_batches
    target = metadata.get("value") or metadata.get("queueLength")
    assert int(target) == k8s_config.daemon.max_batches
    if scaler == "rabbitmq":
        assert metadata["queueName"] == k8s_config.trigger.options.queue
        assert metadata["mode"] == "QueueLength"
        # over amqp KEDA only counts waiting messages and would scale away busy replicas
        assert metadata.get("protocol") == "http"
        (ref,) = auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
        assert ref["parameter"] == "host"
    else:
        assert metadata["queueURL"].startswith("https://sqs.")
        assert metadata["awsRegion"] in metadata["queueURL"]
        assert metadata.get("scaleOnInFlight", "true") == "true"


def test_the_keda_check_would_catch_a_number_where_keda_wants_a_string() -> None:
    (obj,) = (d for d in documents(K8S / "keda-rabbitmq.yaml") if d["kind"] == "ScaledObject")
    obj["spec"]["triggers"][0]["metadata"]["value"] = 2

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, _SCALED_OBJECT)
