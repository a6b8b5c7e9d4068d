"""Property-based testing of the whole API from its OpenAPI document (schemathesis).

The real server (uvicorn, in a thread, over a fresh SQLite store) answers generated requests
for every operation; no answer may be a 5xx or break the documented schema (status codes,
content types, headers, bodies). ``SCHEMATHESIS_EXAMPLES`` sets the examples per operation.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks
from schemathesis.generation.case import Case
from tests.harness import engine_settings

from openbuda.api import create_app

KEY = "ob_schemathesis_owner_key_0123"
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home: Path = tmp_path_factory.mktemp("schemathesis")
    app = create_app(
        engine_settings(home, bootstrap_api_key=KEY, sse_heartbeat_seconds=0.2),
        announce=lambda _text: None,
    )
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_api_conforms_to_its_openapi_document(server: str) -> None:
    """Positive and negative examples for every operation; failures are collected, then
    reported together."""
    api = schemathesis.openapi.from_url(f"{server}/v1/openapi.json")
    headers = {"Authorization": f"Bearer {KEY}"}
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = 0
    for result in api.get_all_operations():
        operation = result.ok()  # pyright: ignore[reportAttributeAccessIssue] - an Err raises
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=[
                    HealthCheck.too_slow,
                    HealthCheck.filter_too_much,
                    HealthCheck.data_too_large,
                    HealthCheck.large_base_example,
                ],
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
            )
            def check(case: Case[Any]) -> None:
                if case.path.endswith("/events/stream"):
                    case.query = {**(case.query or {}), "until": "idle"}  # finite streams
                response = case.call_and_validate(
                    base_url=server,
                    headers=headers,
                    timeout=10,
                    # schema-valid requests may still break rules no schema states (an opaque
                    # cursor, a name of spaces, a choice among a question's options): 400/422.
                    # Unknown query parameters are ignored by design, as in most HTTP APIs, so
                    # a request that only adds one is rightly accepted. What must hold in both
                    # modes: no 5xx, and every response matches the document.
                    excluded_checks=[
                        checks.positive_data_acceptance,
                        checks.negative_data_rejection,
                    ],
                )
                statuses[response.status_code] += 1

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE
            except (Exception, BaseExceptionGroup) as error:  # report every operation's
                failures.append(f"{operation.label} ({mode.value}): {error}")
    assert not failures, "\n\n".join(failures)
    assert operations >= 20
    assert statuses[200] and statuses[201] and statuses[422], statuses
    assert not any(status >= 500 for status in statuses), statuses
