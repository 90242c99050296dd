"""Schemathesis against the service's own OpenAPI schema (`GET /openapi.json`), on a live service (issue 14).

The properties: no request the schema's operations can be sent gets a 5xx; every response conforms to the schema
(status documented, content type and body as declared, headers); and afterwards the service serves a normal session
exactly (FunASR's own loop's tokens) with nothing left behind (rings, sessions).

Every operation is fuzzed, none excluded; how each one that could stream or destroy is kept honest:
- `GET /v1/sessions/{id}/events` streams only for a session that exists; the generated ids are random strings and a
  session id is 128 random bits, so it answers 404 JSON. A request timeout bounds it all the same.
- `DELETE`, `close` and `migrate` of `/v1/sessions/{id}` could end or move a session only by naming it; no generated
  id names one (the well-behaved session runs after the fuzzing, not during it).
- `POST /v1/sessions` does open sessions: each one it opens is deleted right after its check, so the fuzzing never
  fills the service (a full service's 503 is documented, but it is a 5xx, and this test wants none).
- `POST /v1/audio/transcriptions` gets random multipart bodies: 4xx (not audio, too short).
The WebSocket routes (FunASR's `/`, OpenAI's `/v1/realtime`) are not in the schema: tests/app/test_hostile.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.client import ParastreamClient
from tests.audio import synth_speechlike
from tests.harness import CLEAN_EXIT, ServiceProcess, segments_of, wait_for
from tests.helpers import collect
from tests.reference_cache import reference_tokens

# Bounded: 13 operations, this many generated cases each (plus schemathesis's explicit and coverage cases), ~20 s.
MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def fuzzed(model_dir: Path) -> Iterator[ServiceProcess]:
    """A service of its own: the fuzzing may leave it in any state a client can, and it is checked after."""
    with ServiceProcess(model_dir, workers=1, max_sessions=16, max_append_bytes=64_000, max_upload_bytes=2_000_000,
                        session_idle_timeout_s=10) as svc:
        yield svc
    assert svc.proc is not None and svc.proc.returncode in CLEAN_EXIT, svc.log()
    assert segments_of(svc.pid) == []
    svc.remove_log()


@pytest.fixture(scope="module")
def api_schema(fuzzed: ServiceProcess) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{fuzzed.base_url}/openapi.json")
    # A 413 is a rejection too: a JSON body over app/body.py's MAX_JSON_BYTES (schemathesis's negative cases can be
    # hundreds of kB of invalid hotwords) is refused by its size before it is parsed. 413 is in the schema.
    schema.config.checks.negative_data_rejection.expected_statuses.append("413")
    return schema


# Schemathesis's "schema-valid request rejected" (ST202) is not one of the properties: JSON Schema cannot say all
# that a valid request needs (chunk_size's left + right <= 32, a body that is decodable audio, a session id that
# names a session), and those requests get a clear 4xx, which the other checks hold to the schema.
NOT_CHECKED = [positive_data_acceptance]

# Every operation of the schema, each a test of its own (test_the_schema_has_these_operations keeps the list true).
OPERATIONS = [
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions/{session_id}"),
    ("DELETE", "/v1/sessions/{session_id}"),
    ("POST", "/v1/sessions/{session_id}/audio"),
    ("POST", "/v1/sessions/{session_id}/close"),
    ("POST", "/v1/sessions/{session_id}/migrate"),
    ("GET", "/v1/sessions/{session_id}/events"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/workers"),
    ("GET", "/metrics"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("POST", "/v1/audio/transcriptions"),
    ("POST", "/v1/admin/drain"),
]
# Not fuzzed: a drain ends the service under test (tests/app/test_cluster.py drains a node on purpose).
FUZZED = [operation for operation in OPERATIONS if operation != ("POST", "/v1/admin/drain")]


def test_the_schema_has_these_operations(api_schema: schemathesis.BaseSchema) -> None:
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), FUZZED, ids=[f"{m} {p}" for m, p in FUZZED])
def test_schema_fuzz(api_schema: schemathesis.BaseSchema, fuzzed: ServiceProcess, method: str, path: str) -> None:
    """Cases that fit the schema and cases that do not (schemathesis's positive and negative modes), each sent and
    checked by schemathesis's own checks: no 5xx, status, content type, headers and body as documented."""
    operation = api_schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        response = case.call_and_validate(base_url=fuzzed.base_url, timeout=10, excluded_checks=NOT_CHECKED)
        if method == "POST" and path == "/v1/sessions" and response.status_code == 201:
            httpx.delete(f"{fuzzed.base_url}/v1/sessions/{response.json()['id']}", timeout=10)

    check()


def test_after_the_fuzzing_a_session_is_exact(fuzzed: ServiceProcess, model_dir: Path) -> None:
    """Runs after test_schema_fuzz (file order): the service is up, holds nothing the fuzzing opened, and a
    well-behaved session's final tokens are FunASR's own loop's."""
    clip = synth_speechlike(3.0, seed=1401)

    async def run() -> list[str]:
        async with ParastreamClient(fuzzed.base_url) as client:
            sid = (await client.create_session())["id"]
            events = asyncio.create_task(collect(client, sid))
            for start in range(0, len(clip), 8000):
                await client.append(sid, clip[start : start + 8000])
            await client.close(sid)
            final = (await asyncio.wait_for(events, 60))[-1]
            assert final.type == "final", final
            return list(final.data["tokens"])

    assert httpx.get(f"{fuzzed.base_url}/readyz", timeout=10).status_code == 200
    assert asyncio.run(run()) == reference_tokens(model_dir, clip)
    wait_for(lambda: segments_of(fuzzed.pid) == [], 10, "no ring left")
