"""What-if runs: a tieline role with one product setting changed in memory, to measure a
recommended product change before anyone edits the product. tieline never uses this.

    python -m bench.whatif --max-workers 64 interactions

``--max-workers N``: the write services' FastStream subscriber processes up to N commands
concurrently (``broker.subscriber(..., max_workers=N)``), overriding what the product passes
(FastStream's default is one at a time; since commit f465f9a the product passes
``TIELINE_COMMAND_CONCURRENCY``, 64). Everything else is the product's code, started as
``tieline.services.runtime.run`` does.
"""

from __future__ import annotations

import argparse
from typing import Any


def patch_max_workers(n: int) -> None:
    from faststream.nats import NatsBroker

    original = NatsBroker.subscriber

    def subscriber(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["max_workers"] = n  # overrides whatever the product passes
        return original(self, *args, **kwargs)

    NatsBroker.subscriber = subscriber  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.whatif")
    p.add_argument("--max-workers", type=int, default=0)
    p.add_argument("role", choices=("people", "interactions"))
    a = p.parse_args(argv)
    if a.max_workers:
        patch_max_workers(a.max_workers)
    from tieline.services.runtime.run import main as run_main

    run_main([a.role])


if __name__ == "__main__":
    main()
