"""The UI is served at ``/`` and ``/ui/`` with a strict security policy, beside the API (no
browser needed)."""

from __future__ import annotations

import re

import httpx

from openbuda.web import STATIC_DIR, UI_HEADERS
from tests.web.conftest import UiServer


def test_the_ui_is_served_with_a_strict_policy_beside_the_api(server: UiServer) -> None:
    with httpx.Client(base_url=server.url) as anonymous:
        page = anonymous.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        script = anonymous.get("/ui/app.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        for response in (page, script):
            for name, value in UI_HEADERS.items():
                assert response.headers[name] == value
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "connect-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert anonymous.get("/ui/missing.js").status_code == 404
        assert anonymous.get("/v1/health").json()["status"] == "ok"
        assert anonymous.get("/v1/docs").status_code == 200
        assert anonymous.get("/v1/agents").status_code == 401
        assert "content-security-policy" not in anonymous.get("/v1/health").headers


def test_every_module_the_page_loads_is_shipped() -> None:
    """The files the page names exist in the package (and so in the wheel: hatch ships the
    package directory whole)."""
    names = {path.name for path in STATIC_DIR.iterdir()}
    assert {"index.html", "app.js", "app.css", "favicon.svg"} <= names
    for script in STATIC_DIR.glob("*.js"):
        text = script.read_text()
        assert "innerHTML" not in text, f"{script.name} writes HTML"
        for imported in re.findall(r'from "\./([\w-]+\.js)"', text):
            assert imported in names, f"{script.name} imports a missing {imported}"
