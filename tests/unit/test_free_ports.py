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
