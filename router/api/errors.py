"""Errors as JSON, in OpenAI's shape everywhere: {"error": {"message", "type", "param", "code"}}.

The message is the one the CLI gives for the same mistake (the same PennyrouteError); its class
says the status: TooLargeError 413, InputError 400, NotFoundError 404, ConflictError 409, NoModelError
422, BudgetError 402, ConfigError 500, any other PennyrouteError 400. An unexpected error answers 500 with no detail (its traceback is
logged, redacted).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from router.errors import (
    BudgetError,
    ConfigError,
    ConflictError,
    InputError,
    NoModelError,
    NotFoundError,
    PennyrouteError,
    TooLargeError,
)
from router.redact import redact

log = logging.getLogger("pennyroute.api")


class ApiError(Exception):
    """An answer other than 2xx, said by the API itself (auth, scope, a missing part)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def body(message: str, *, kind: str, param: str | None = None, code: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


STATUS_OF: tuple[tuple[type[PennyrouteError], int, str], ...] = (
    (TooLargeError, 413, "invalid_request_error"),
    (InputError, 400, "invalid_request_error"),
    (NotFoundError, 404, "not_found_error"),
    (ConflictError, 409, "invalid_request_error"),
    (NoModelError, 422, "no_model_error"),
    (BudgetError, 402, "budget_error"),
    (ConfigError, 500, "server_error"),
)


def for_error(exc: PennyrouteError) -> ApiError:
    status, kind = next(((s, k) for cls, s, k in STATUS_OF if isinstance(exc, cls)), (400, "invalid_request_error"))
    param = exc.field if isinstance(exc, InputError) else None
    code = exc.code if isinstance(exc, (ConflictError, TooLargeError)) else kind.removesuffix("_error")
    return ApiError(status, str(exc), kind=kind, param=param, code=code)


def install(app: FastAPI) -> None:
    """The API's error handlers: every error answers in the one shape."""

    def answer(err: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse(
            body(err.message, kind=err.kind, param=err.param, code=err.code), status_code=err.status, headers=headers
        )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return answer(exc)

    @app.exception_handler(PennyrouteError)
    async def _pennyroute_error(request: Request, exc: PennyrouteError) -> JSONResponse:
        return answer(for_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return answer(ApiError(exc.status_code, str(exc.detail), kind=kind))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form")]
        param = ".".join(where) or None
        message = f"{param}: {first.get('msg', 'invalid')}" if param else str(first.get("msg", "invalid request"))
        return answer(ApiError(400, message, param=param))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s: %s", request.method, request.url.path, redact(repr(exc)), exc_info=exc)
        return answer(ApiError(500, "internal error (logged on the server)", kind="server_error"))
