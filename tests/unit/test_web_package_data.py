"""The web page's files ship in the package: every file under services/api/web/static/ is
matched by a package-data glob of tieline.services in pyproject.toml (an installed tieline
serves /app without the source tree)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "services" / "api" / "web" / "static"


def test_every_static_file_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["tieline.services"]
    files = [p.relative_to(ROOT / "services").as_posix() for p in STATIC.rglob("*") if p.is_file()]
    assert any(f.endswith("index.html") for f in files) and len(files) > 10
    # setuptools globs do not cross "/" with "*": compare segment by segment.
    unmatched = [
        f
        for f in files
        if not any(
            len(g.split("/")) == len(f.split("/"))
            and all(
                fnmatch.fnmatchcase(x, y) for x, y in zip(f.split("/"), g.split("/"), strict=True)
            )
            for g in globs
        )
    ]
    assert not unmatched, (
        f"add these to [tool.setuptools.package-data] tieline.services: {unmatched}"
    )
