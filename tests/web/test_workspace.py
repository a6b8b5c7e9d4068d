"""The UI end to end, as a person uses it: sign in, create an agent, chat with it while its
steps appear live, approve its shell command, see the result and the file it made, open that
file in Drive, edit it, restore the older version; manage sessions; the computer screen."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("playwright", reason="playwright is not installed (pip install playwright)")

from playwright.sync_api import expect

from openbuda.testing import call, delayed, reply
from tests.client.live_server import API_KEY
from tests.web.conftest import Screen, UiServer

REPORT_V1 = "# Report\n\nfirst draft\n"
REPORT_V2 = "# Report\n\nsecond draft\n"

# Records the text of the streaming bubble each time it changes.
_WATCH_STREAMING = """() => {
  window.streamedText = [];
  const log = document.getElementById("log");
  new MutationObserver(() => {
    const text = log.querySelector(".msg.streaming .text")?.textContent;
    if (text) window.streamedText.push(text);
  }).observe(log, { subtree: true, childList: true, characterData: true });
}"""


def test_sign_in_refuses_a_wrong_key_and_signs_out(screen: Screen) -> None:
    page = screen.page
    page.goto(screen.url + "/")
    page.get_by_label("API key").fill("ob_not_a_key_000000000000000")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("unauthorized")
    assert page.evaluate("sessionStorage.length") == 0
    screen.shot("sign-in-error")

    screen.sign_in()
    assert page.evaluate("sessionStorage.getItem('openbuda.apiKey')") == API_KEY
    assert page.evaluate("localStorage.length") == 0
    page.reload()  # the key outlives a reload of the tab
    expect(page.get_by_role("heading", name="Agents")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    assert screen.page_errors() == []


def test_an_agent_is_created_chats_asks_for_approval_and_its_file_is_restored(
    screen: Screen, server: UiServer
) -> None:
    page = screen.page
    screen.sign_in()

    # Create an agent; the API's validation error shows in the form first.
    page.get_by_label("Name").fill("Writer")
    page.get_by_label("Model").fill("test:scripted")
    page.get_by_label("Instructions").fill("Write reports.")
    page.get_by_label("Settings (JSON)").fill('{"approval_tools": "shell"}')
    page.get_by_role("button", name="Create agent").click()
    expect(page.get_by_role("alert")).to_contain_text("validation_error")
    page.get_by_label("Settings (JSON)").fill("{not json")
    page.get_by_role("button", name="Create agent").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid JSON")
    page.get_by_label("Settings (JSON)").fill('{"approval_tools": ["shell"]}')
    page.get_by_role("button", name="Create agent").click()
    expect(page.get_by_role("heading", name="New conversation")).to_be_visible()
    agents = server.api.get("/v1/agents").json()["items"]
    assert [(a["name"], a["settings"]["approval_tools"]) for a in agents] == [("Writer", ["shell"])]
    agent_id = agents[0]["id"]

    # Chat: the shell call waits for approval; the reply streams after it ran.
    server.model.add(
        call("shell", command=f"mkdir -p out && printf '{REPORT_V1}' > out/report.md"),
        delayed(0.3, reply("I wrote **out/report.md** with the first draft.")),
    )
    page.get_by_label("Message").fill("Write the report")
    page.get_by_label("Message").press("Control+Enter")
    approve = page.get_by_role("button", name="Approve")
    expect(approve).to_be_visible()
    expect(page.locator(".msg.user")).to_have_text("Write the report")
    expect(page.locator("#stream-state")).to_have_text("Live")
    expect(page.locator(".task-status").first).to_contain_text("waiting")
    expect(page.locator(".question")).to_contain_text("shell")
    expect(page.locator("#sessions .badge").first).to_have_text("waiting")
    expect(page.locator("#cancel")).to_be_enabled()
    screen.shot("workspace-approval")

    # Text streams into a bubble of its own before the stored message replaces it.
    page.evaluate(_WATCH_STREAMING)
    approve.click()
    result = page.locator(".result")
    expect(result).to_contain_text("/agent/out/report.md")
    expect(page.locator(".msg.assistant")).to_have_text(
        "I wrote out/report.md with the first draft."
    )
    expect(page.locator(".question")).to_contain_text("Answered: Approved")
    expect(page.locator(".tool .badge")).to_have_text("ok")
    expect(page.locator(".files-changed")).to_contain_text("/agent/out/report.md")
    expect(page.locator(".msg.assistant strong")).to_have_text("out/report.md")
    expect(page.locator(".task-status").first).to_contain_text("completed")
    expect(page.locator("#cancel")).to_be_disabled()
    streamed = page.evaluate("window.streamedText")
    full = "I wrote **out/report.md** with the first draft."
    assert streamed and all(full.startswith(text) for text in streamed), streamed

    # The tool call in full, in the side panel; Escape closes it and gives focus back.
    page.locator(".tool-open").click()
    panel = page.get_by_role("complementary", name="Tool call")
    expect(panel.locator(".tool-input")).to_contain_text("mkdir -p out")
    expect(panel.locator(".tool-output")).to_contain_text("exit code")
    screen.shot("workspace-result")
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(page.locator(".tool-open")).to_be_focused()

    # Save the result, and the whole session, to Drive.
    result.get_by_role("button", name="Save result to Drive").click()
    result.get_by_label("Path in Drive").fill("saved/result.md")
    result.get_by_role("button", name="Save", exact=True).click()
    expect(result.locator(".save .status")).to_contain_text("saved/result.md (version 1)")
    header = page.locator(".chat-header")
    header.get_by_role("button", name="Save session to Drive").click()
    header.get_by_label("Path in Drive").fill("saved/session.md")
    header.get_by_role("combobox", name="Drive").select_option("space")
    header.get_by_role("button", name="Save", exact=True).click()
    expect(header.locator(".save .status")).to_contain_text("saved/session.md (version 1)")
    transcript = server.api.get("/v1/space/drive/files/saved/session.md")
    assert transcript.status_code == 200
    assert "Write the report" in transcript.text

    # The produced file in Drive: preview, edit, history, diff, restore.
    page.locator(".files-changed a.file-link").click()
    expect(page.locator("#file-name")).to_have_text("report.md")
    expect(page.locator("#preview h1")).to_have_text("Report")
    expect(page.locator("#file-version")).to_contain_text("Version 1")
    expect(page.get_by_role("navigation", name="Breadcrumb")).to_contain_text("out")
    screen.shot("drive-preview")

    page.get_by_role("button", name="Edit").click()
    page.locator("#editor").fill(REPORT_V2)
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#preview p")).to_have_text("second draft")
    expect(page.locator("#file-version")).to_contain_text("Version 2")

    page.get_by_role("button", name="History").click()
    first = page.locator("#history tr[data-version='1']")
    expect(first).to_contain_text(f"agent {agent_id[:4]}…{agent_id[-6:]}, task tsk_")
    expect(first.locator("[title^='agent ']")).to_have_attribute(
        "title", re.compile(rf"^agent {agent_id}, task tsk_\w+, session ses_\w+$")
    )
    first.get_by_role("button", name="Diff to latest").click()
    expect(page.locator("#diff .diff-del")).to_have_text(["-first draft\n"])
    expect(page.locator("#diff .diff-add")).to_have_text(["+second draft\n"])
    screen.shot("drive-history")
    first.get_by_role("button", name="Restore").click()
    expect(page.locator("#preview p")).to_have_text("first draft")
    expect(page.locator("#file-version")).to_contain_text("Version 3")
    expect(page.locator("#history tr[data-version='3']")).to_contain_text("from 1")
    expect(page.locator("#files tr[data-path='out/report.md'] td").nth(2)).to_have_text("3")
    restored = server.api.get(f"/v1/agents/{agent_id}/drive/files/out/report.md")
    assert restored.text == REPORT_V1
    assert restored.headers["x-drive-version"] == "3"

    # The agent's computer ran the command: its screen shows it.
    page.goto(f"{server.url}/#/agents/{agent_id}/computer")
    expect(page.locator("#computer-status")).to_contain_text("Memory")
    expect(page.locator("#computer-status .badge")).to_have_text(
        re.compile("running|sleeping|stopped")
    )
    screen.shot("computer")
    assert screen.page_errors() == []


def test_sessions_are_renamed_resumed_and_deleted(screen: Screen, server: UiServer) -> None:
    agent = server.api.post("/v1/agents", json={"name": "Keeper"}).json()
    first = server.api.post(f"/v1/agents/{agent['id']}/sessions", json={"title": "First"}).json()
    server.api.post(f"/v1/agents/{agent['id']}/sessions", json={"title": "Second"})
    page = screen.page
    screen.sign_in()
    page.get_by_role("link", name="Keeper").click()
    sessions = page.locator("#sessions")
    expect(sessions.locator(".session-link")).to_have_count(2)

    page.get_by_role("link", name="First").click()
    expect(page.locator("#session-title")).to_have_text("First")

    # Escape leaves the title as it was; Enter saves it.
    page.get_by_role("button", name="Rename First").click()
    page.get_by_label("New title").fill("Ignored")
    page.keyboard.press("Escape")
    expect(sessions.get_by_role("link", name="First")).to_be_visible()
    page.get_by_role("button", name="Rename First").click()
    page.get_by_label("New title").fill("Renamed")
    page.keyboard.press("Enter")
    expect(sessions.get_by_role("link", name="Renamed")).to_be_visible()
    expect(page.locator("#session-title")).to_have_text("Renamed")
    assert server.api.get(f"/v1/sessions/{first['id']}").json()["title"] == "Renamed"

    # Delete asks first: Cancel keeps the session, Delete removes it.
    page.get_by_role("button", name="Delete Second").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    expect(sessions.locator(".session-link")).to_have_count(2)
    page.get_by_role("button", name="Delete Second").click()
    screen.shot("session-delete-confirm")
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(sessions.locator(".session-link")).to_have_count(1)
    listed = server.api.get(f"/v1/agents/{agent['id']}/sessions").json()["items"]
    assert [s["title"] for s in listed] == ["Renamed"]
    assert screen.page_errors() == []
