"""Exceptions become HTTP answers here and only here (as the CLI's entry point does for exit
codes): a JSON body ``{"detail": message, "exit_code": n}``, never a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from casbackup.errors import (
    AmbiguousId,
    CasError,
    ConfigError,
    IntegrityError,
    LockError,
    NotFound,
    RepositoryNotFound,
    UnsupportedFormat,
    UsageError,
    WrongPassword,
)

log = logging.getLogger("casbackup.server")

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
]


def status_for(exc: CasError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def install(app: FastAPI) -> None:
    @app.exception_handler(CasError)
    async def cas_error(_request: Request, exc: CasError) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc), "exit_code": exc.exit_code}, status_code=status_for(exc)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged for the operator with its traceback; the client gets one line.
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)
