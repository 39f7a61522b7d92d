"""find_free_port never hands the same port out twice in one process: a stack picks its
health ports before the embedded servers pick theirs, none of them bound yet, and the kernel
may offer a closed probe's port again (PostgreSQL was once given the worker's health port)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tieline.services.runtime import server_binaries


class ScriptedSocket:
    """A socket whose bind to port 0 gets the next port of a script, as a kernel could."""

    script: Iterator[int] = iter(())

    def __init__(self, *_: Any) -> None:
        self.port = 0

    def __enter__(self) -> ScriptedSocket:
        return self

    def __exit__(self, *_: Any) -> None:
        return None

    def bind(self, address: tuple[str, int]) -> None:
        self.port = next(self.script)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_a_port_offered_again_is_not_handed_out_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_binaries, "_handed_out", set())
    monkeypatch.setattr(ScriptedSocket, "script", iter([41000, 41000, 41000, 41001, 41000]))
    monkeypatch.setattr(server_binaries.socket, "socket", ScriptedSocket)
    first = server_binaries.find_free_port()
    second = server_binaries.find_free_port()
    assert (first, second) == (41000, 41001)


def test_a_port_the_stack_was_given_is_never_picked_for_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A given api port in the ephemeral range, not bound until the api starts, could be
    offered as a health port before that."""
    monkeypatch.setattr(server_binaries, "_handed_out", set())
    monkeypatch.setattr(ScriptedSocket, "script", iter([41000, 41002]))
    monkeypatch.setattr(server_binaries.socket, "socket", ScriptedSocket)
    server_binaries.reserve_ports(41000, None)
    assert server_binaries.find_free_port() == 41002


def test_the_embedded_postgres_gets_connections_for_each_api_process_and_worker(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At PostgreSQL's default of 100, three busy api processes (pools of up to 28
    connections each) and the services ran out of connections."""
    from tieline.services.runtime import supervisor

    made: list[dict[str, Any]] = []

    class Recorded:
        def __init__(self, *_: Any, **kwargs: Any) -> None:
            made.append(kwargs)
            self.url = "postgresql://x"

        def start(self) -> None:
            return None

    monkeypatch.setattr(supervisor, "EmbeddedPostgres", Recorded)
    for api_workers, workers, expected in ((1, 1, 100), (3, 2, 100 + 2 * 28 + 8)):
        config = supervisor.StackConfig(
            data_dir=tmp_path, nats_url="nats://x", api_workers=api_workers, workers=workers
        )
        supervisor.Stack(config).start_servers()
        assert made.pop()["max_connections"] == expected
