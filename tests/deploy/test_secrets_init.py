"""``tieline secrets init``: the deployment's .env (docs/operations.md, "Deploy")."""

from __future__ import annotations

import base64
import stat
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
