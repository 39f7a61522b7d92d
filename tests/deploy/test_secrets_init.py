"""``tieline secrets init``: the deployment's .env (docs/operations.md, "Deploy")."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from pathlib import Path

from tieline.services.auth import split_token
from tieline.services.cli.main import app
from tieline.services.runtime.deploy_secrets import SECRET_NAMES, read_env_file
from typer.testing import CliRunner


def test_writes_every_secret_privately_and_never_overwrites_by_accident(tmp_path: Path) -> None:
    env = tmp_path / "deploy" / ".env"
    runner = CliRunner()
    first = runner.invoke(app, ["secrets", "init", "-o", str(env)])
    assert first.exit_code == 0, first.output
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    values = read_env_file(env)
    assert list(values) == list(SECRET_NAMES)
    assert len(set(values.values())) == len(values), "every secret is its own random value"
    assert len(base64.b64decode(values["TIELINE_MASTER_KEY"])) == 32
    assert split_token(values["TIELINE_ADMIN_TOKEN"]) is not None
    # Compose would read "$" as a variable reference; URLs need no escaping.
    assert all("$" not in v and "@" not in v and ":" not in v for v in values.values())

    again = runner.invoke(app, ["secrets", "init", "-o", str(env)])
    assert again.exit_code == 1 and "--force" in again.output
    assert read_env_file(env) == values

    forced = runner.invoke(app, ["secrets", "init", "-o", str(env), "--force"])
    assert forced.exit_code == 0, forced.output
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert read_env_file(env).keys() == values.keys() and read_env_file(env) != values
    assert [p.name for p in env.parent.iterdir()] == [".env"], "no temporary file left behind"


def test_nats_server_reads_every_generated_password_as_a_string(tmp_path: Path) -> None:
    """Deployment configs reference passwords as ``$VARIABLE``; nats-server parses the value
    as a config token, so a password it would read as a number breaks the server at start.
    (``token_urlsafe`` did, about one value in six.) 200 fresh passwords, one config."""
    from tieline.services.runtime.embedded import nats_server_binary
    from tieline.services.runtime.nats_auth import new_password

    env = {f"PW_{i}": new_password() for i in range(200)}
    users = "\n".join(f'    {{user: "u{i}", password: $PW_{i}}}' for i in range(200))
    conf = tmp_path / "nats.conf"
    conf.write_text(f"listen: 127.0.0.1:-1\nauthorization {{\n  users: [\n{users}\n  ]\n}}\n")
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(conf)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
