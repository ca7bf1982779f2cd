"""GET /openapi.json describes the HTTP API exactly, and the API keeps to it under fuzzing."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from openapi_spec_validator import validate

from service.http.openapi import spec
from tests.support import PYTHON, Client, api, free_port

DOCUMENTED = ("/api/", "/healthz", "/readyz", "/openapi.json", "/sse")
METHODS = {"get", "put", "post", "delete", "patch"}
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance")


def _rules(app: Any) -> set[tuple[str, str]]:
    """(OpenAPI path, method) for every Flask rule the document must describe."""
    found = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(DOCUMENTED):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        found |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return found


def test_document_is_valid_and_covers_every_route(cluster: Any, app: Any) -> None:
    fe = cluster.frontend("oa")
    r = api(fe, "GET", "/openapi.json", key="")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    doc = r.json()
    validate(doc)  # raises on an invalid OpenAPI 3.0 document
    assert doc == spec()

    documented = {(path, m) for path, item in doc["paths"].items() for m in item if m in METHODS}
    assert documented == _rules(app)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            secured = op["security"] == [{"bearer": []}]
            assert secured == path.startswith("/api/"), (method, path)
            if secured:  # every keyed operation documents the key and outage errors
                assert {"401", "503"} <= set(op["responses"]), (method, path)

    # the error body the document promises, for statuses schemathesis does not reach
    wrong = api(fe, "PATCH", "/api/publish")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
    assert "POST" in wrong.headers["Allow"]
    big = api(fe, "POST", "/api/publish", json={"target": {"all": True}, "event": "e",
                                                "data": "x" * 70_000})
    assert big.status_code == 413 and big.json()["error"] == "too_large"
    nul = api(fe, "GET", "/api/tasks/a%00b")
    assert nul.status_code == 404 and nul.json()["error"] == "not_found"


def test_database_outage_is_a_documented_503() -> None:
    from service.app import create_app

    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/herald"
    client = create_app({"database_url": dead}, start=False).test_client()
    r = client.get("/api/frontends", headers={"Authorization": "Bearer test-key-1"})
    assert r.status_code == 503 and r.get_json()["error"] == "unavailable"
    assert "503" in spec()["paths"]["/api/frontends"]["get"]["responses"]


def test_schemathesis_finds_no_server_error_or_schema_violation(
        cluster: Any, token: Any, tmp_path: Path) -> None:
    fe = cluster.frontend("oa")
    # data for the documented examples (scope default, group lobby, user alice), so member
    # and connection lists are non-empty and their item schemas get checked too
    alice = Client(fe.ws_url)
    try:
        alice.hello(token("alice"))
        assert alice.request("join", group="lobby")["op"] == "ack"
        # and a durable event in lobby's history, so its page's schema is checked too
        assert api(fe, "POST", "/api/publish", json={"target": {"group": "lobby"},
                                                     "event": "hello"}).status_code == 202
        cmd = [str(Path(PYTHON).parent / "schemathesis"), "run", f"{fe.url}/openapi.json",
               "--header", "Authorization: Bearer test-key-1", "--checks", CHECKS,
               "--max-examples", "50", "--generation-deterministic",
               "--workers", "1", "--request-timeout", "10",
               "--no-color"]
        run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    finally:
        alice.close()
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    # every operation was tested but GET /openapi.json, which schemathesis leaves out as
    # the endpoint it loaded the schema from
    n = sum(1 for item in spec()["paths"].values() for m in item if m in METHODS)
    assert f"Tested: {n - 1}" in out, out
