"""schemathesis against the app's own OpenAPI schema: for generated inputs (valid and not), no
5xx, and every answer matches the schema (status documented, content type, body shape).

Bounded: a few examples per operation (the machine is shared); set
CASBACKUP_SCHEMATHESIS_EXAMPLES=200 for a deeper run.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server.conftest import Env

EXAMPLES = int(os.environ.get("CASBACKUP_SCHEMATHESIS_EXAMPLES", "6"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_schema_is_complete(env: Env) -> None:
    doc = env.client.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer" and schemes["APIKeyCookie"]["in"] == "cookie"
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            public = path in ("/healthz", "/api/auth/login")
            assert bool(op.get("security")) != public, (
                method,
                path,
            )  # who needs a login is declared
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("summary") or op.get("description"), (method, path)
            assert {"200", "201", "202", "204"} & set(op["responses"]), (method, path)
            assert {"401", "403", "404"} <= set(op["responses"]), (method, path)


def check_operation(env: Env, operation: Any, who: str) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case: Any) -> None:
        case.call_and_validate(headers=env.h(who), checks=CHECKS)
        env.client.cookies.clear()

    run()


@pytest.mark.slow
def test_api_conforms_to_its_schema(env: Env) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", env.client.app)
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/events":
            continue  # a stream that does not end; covered by test_jobs/test_e2e
        for who in ("admin", "scoped"):
            check_operation(env, operation, who)
        tested.append(f"{operation.method.upper()} {operation.path}")
    assert len(tested) >= 35
