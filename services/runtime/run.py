"""Entry point of one tieline process: ``python -m tieline.services.runtime.run ROLE``.

Roles: ``api``, ``people``, ``interactions``, ``worker``. Settings come from the environment
(``TIELINE_*``); ``tieline up`` sets them for the processes it supervises.
"""

from __future__ import annotations

import asyncio
import sys

from tieline.plumbing.config import Settings
from tieline.plumbing.logging import configure_logging

ROLES = ("api", "people", "interactions", "worker")


async def run_role(role: str, settings: Settings) -> None:
    """Run one role until it is told to stop (SIGTERM/SIGINT)."""
    if role == "api":
        import uvicorn
        from tieline.services.api.app import create_app as create_api

        config = uvicorn.Config(
            create_api(settings),
            host=settings.api_host,
            port=settings.api_port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        await uvicorn.Server(config).serve()
    elif role in ("people", "interactions"):
        if role == "people":
            from tieline.services.people.app import create_app
        else:
            from tieline.services.interactions.app import create_app
        await create_app(settings).run()
    elif role == "worker":
        from tieline.projections.worker import serve

        await serve(settings)
    else:
        raise SystemExit(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ROLES:
        raise SystemExit(f"usage: python -m tieline.services.runtime.run {{{','.join(ROLES)}}}")
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    import structlog

    structlog.contextvars.bind_contextvars(role=args[0])
    asyncio.run(run_role(args[0], settings))


if __name__ == "__main__":
    main()
