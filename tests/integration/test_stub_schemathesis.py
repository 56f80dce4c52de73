"""The stub's OpenAPI document is its contract: Schemathesis generates requests from it.

The document is read from the running process (``/openapi.json``), and every operation is
called with generated valid and invalid data, as an admin and (for ``/v1/enroll`` and
``/v1/agent/...``) as an agent. Each answer must be no 5xx, carry a status code and content
type the document declares for that operation, and match the declared schema. The number of
examples per operation is bounded so the whole file stays well under a minute.

The fuzzing admin is its own operator with a name no generator guesses, so a generated
``DELETE /v1/admin/operators/{name}`` never revokes the credential the run uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import PROFILES
from tests.stub_process import StubProcess

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = {
    schemathesis.GenerationMode.POSITIVE: 25,
    schemathesis.GenerationMode.NEGATIVE: 15,
}
AGENT_PATHS = ("/v1/enroll", "/v1/agent/")


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubProcess]:
    process = StubProcess.start(tmp_path_factory.mktemp("stub-schemathesis"))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def world(stub: StubProcess) -> dict[str, str]:
    """Something to find: a profile, an assignment, an enrolled cluster with a bundle."""
    stub.put_profile("hello-web", PROFILES / "hello-web")
    response = stub.admin.put(
        "/v1/admin/assignments/eu",
        json={"profile": "hello-web", "selector": {"labels": {"region": "eu"}}},
    )
    assert response.status_code == 200, response.text
    fuzzer = f"fuzz-{os.urandom(6).hex()}"
    made = stub.admin.post("/v1/admin/operators", json={"name": fuzzer, "role": "admin"})
    assert made.status_code == 201, made.text
    return {
        "admin": made.json()["credential"],
        "agent": stub.enroll("fuzz-site", {"region": "eu"}),
        "token": stub.token(uses=100_000),
    }


def run_operation(
    operation: Any, headers: dict[str, str], mode: schemathesis.GenerationMode
) -> None:
    fixed: dict[str, Any] = {"headers": headers}
    if operation.path == "/v1/agent/wait":
        fixed["query"] = {"timeout": 0}  # generated timeouts would hold each call up to 300 s

    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    def check(case: schemathesis.Case) -> None:
        if operation.path == "/v1/agent/wait":
            case.query = {**(case.query or {}), "timeout": 0}
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

    try:
        check()
    except hypothesis.errors.Unsatisfiable:
        # Nothing to make invalid: the operation has no parameters and no body.
        assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label


def run_all(
    stub: StubProcess,
    headers: dict[str, str] | Callable[[Any], dict[str, str]],
    *,
    agent: bool,
) -> list[str]:
    schema = schemathesis.openapi.from_url(f"{stub.url}/openapi.json", timeout=30)
    failures = []
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith(AGENT_PATHS) != agent:
            continue
        if operation.path == "/v1/agent/credential":
            continue  # rotation is run last, on its own credential (below)
        for mode in EXAMPLES:
            try:
                run_operation(operation, headers(operation) if callable(headers) else headers, mode)
            except Exception as exc:  # every failure of every operation, not just the first
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")
        tested += 1
    assert tested >= (4 if agent else 25), tested
    return failures


def test_every_admin_operation_keeps_its_contract(stub: StubProcess, world: dict[str, str]) -> None:
    failures = run_all(stub, {"Authorization": f"Bearer {world['admin']}"}, agent=False)
    assert not failures, "\n\n".join(failures)
    assert "Traceback" not in (stub.root / "stub.log").read_text(errors="replace")


def test_every_agent_operation_keeps_its_contract(stub: StubProcess, world: dict[str, str]) -> None:
    def headers(operation: Any) -> dict[str, str]:
        secret = world["token"] if operation.path == "/v1/enroll" else world["agent"]
        return {"Authorization": f"Bearer {secret}"}

    failures = run_all(stub, headers, agent=True)
    # Rotation last: every call retires credentials, so it gets a cluster of its own.
    schema = schemathesis.openapi.from_url(f"{stub.url}/openapi.json", timeout=30)
    rotate = schema["/v1/agent/credential"]["POST"]
    for mode in EXAMPLES:
        secret = stub.enroll(f"fuzz-rotate-{mode.value}")
        try:
            run_operation(rotate, {"Authorization": f"Bearer {secret}"}, mode)
        except Exception as exc:
            failures.append(f"{rotate.label} [{mode.value}]: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
    assert "Traceback" not in (stub.root / "stub.log").read_text(errors="replace")
