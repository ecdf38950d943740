"""Exceptions become HTTP answers here and only here (as the CLI's entry point does for exit
codes): a JSON body ``{"detail": message, "exit_code": n}``, never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from casbackup.errors import (
    AmbiguousId,
    CasError,
    ConfigError,
    IntegrityError,
    LockError,
    NotFound,
    RepositoryNotFound,
    StorageError,
    UnsupportedFormat,
    UsageError,
    WrongPassword,
)
from casbackup.text import storable

log = logging.getLogger("casbackup.server")


class ErrorBody(BaseModel):
    """Every error answer (except 422, FastAPI's validation errors): one line, no traceback."""

    detail: str
    exit_code: int | None = Field(None, description="the CLI's exit code for the same failure")


_R = {"model": ErrorBody}
# Documented on every route, so the schema says what a client can get back.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_R, "description": "bad request (a value the library refused)"},
    401: {**_R, "description": "not authenticated, or the token is unknown, expired or revoked"},
    403: {**_R, "description": "the caller's role may not do this (or CSRF token missing)"},
    404: {**_R, "description": "no such object, or one the caller may not see"},
    409: {**_R, "description": "conflict: locked repository, ambiguous id, missing setting"},
    413: {**_R, "description": "request body too large"},
    429: {**_R, "description": "too many failed logins"},
    500: {**_R, "description": "damaged repository data or an unexpected error"},
    503: {**_R, "description": "the service cannot open its repository or write its state"},
}

# Most specific first: the first class an error is an instance of decides.
STATUS: list[tuple[type[CasError], int]] = [
    (NotFound, 404),
    (AmbiguousId, 409),
    (LockError, 409),
    (UsageError, 400),
    (ConfigError, 400),
    # The service's own repository is missing, or its passphrase is wrong: not the caller's fault.
    (RepositoryNotFound, 503),
    (WrongPassword, 503),
    (UnsupportedFormat, 503),
    (IntegrityError, 500),
    # The service's state folder full or unwritable (statedb), or its repository's storage.
    (StorageError, 503),
]


class SafeJSONResponse(JSONResponse):
    """JSONResponse whose text need not be UTF-8: a name that is not (surrogate-escaped bytes,
    or a lone surrogate a JSON request escaped, ``"\\udcff"``) is shown as ``storable`` shows
    it instead of failing to encode (a 500, or a reset connection). The document is walked
    only when the plain encode fails."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return super().render(storable(content))


def status_for(exc: CasError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def install(app: FastAPI) -> None:
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The same body shape as every other error (a string detail), headers kept.
        return SafeJSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code,
                                headers=getattr(exc, "headers", None))  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own shape (a list of errors, each echoing its input), made encodable.
        return SafeJSONResponse({"detail": jsonable_encoder(storable(exc.errors()))},
                                status_code=422)  # fmt: skip

    @app.exception_handler(CasError)
    async def cas_error(_request: Request, exc: CasError) -> JSONResponse:
        return SafeJSONResponse(
            {"detail": str(exc), "exit_code": exc.exit_code}, status_code=status_for(exc)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged for the operator with its traceback; the client gets one line.
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return SafeJSONResponse(
            {"detail": f"internal error ({type(exc).__name__})"}, status_code=500
        )
