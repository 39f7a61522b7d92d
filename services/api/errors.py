"""How the API refuses: one error shape for every rejection, ``{"error": ..., "detail":
[...]}``, whose ``error`` line names the field at fault."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class ApiError(Exception):
    """A refusal with its HTTP status; ``detail`` lists the fields at fault."""

    def __init__(self, status: int, message: str, detail: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.detail = detail or []


async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own validation errors, in the same shape as every other rejection: an
    ``error`` line naming the field, and the details."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")} for e in exc.errors()
    ]
    text = "; ".join(f"{'.'.join(e['loc']) or '(body)'}: {e['msg']}" for e in errors)
    return JSONResponse({"error": text or "invalid request", "detail": errors}, status_code=422)


async def api_error(_: Request, exc: Exception) -> JSONResponse:
    """An :class:`ApiError` as JSON; a 401 says which scheme to use."""
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(
        {"error": str(exc), "detail": exc.detail}, status_code=exc.status, headers=headers
    )


def install(app: FastAPI) -> None:
    """Answer validation errors and :class:`ApiError` in the API's error shape."""
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(ApiError, api_error)
