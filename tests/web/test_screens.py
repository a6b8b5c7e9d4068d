"""The rest of the screens: Drive's folder tree (mouse, keyboard, phone width), cancelling a
task from the workspace with a tool's live output in the side panel, the computer's
sleep / wake / restart and preview links, and deleting an agent (admins only)."""

from __future__ import annotations

import re
import time

import pytest

pytest.importorskip("playwright", reason="playwright is not installed (pip install playwright)")

from playwright.sync_api import expect

from openbuda.testing import call, reply
from openbuda.web import STATIC_DIR
from tests.client.live_server import free_port
from tests.web.conftest import Screen, UiServer


def test_drive_folders_open_through_the_tree_by_mouse_and_keyboard(
    screen: Screen, server: UiServer
) -> None:
    for path in ("a/b/c/deep.txt", "a/b/side.txt", "a/other/x.txt", "top.txt"):
        assert server.api.put(f"/v1/space/drive/files/{path}", content=path.encode()).is_success
    page = screen.page
    screen.sign_in()
    page.get_by_role("link", name="Space Drive").click()
    tree = page.get_by_role("navigation", name="Folders")
    root = tree.locator(".tree-node[data-path='']")
    expect(root.locator(":scope > .tree-row > .tree-toggle")).to_have_attribute(
        "aria-expanded", "true"
    )
    # Only the root's folders are loaded: "a", not yet its subfolders.
    expect(tree.locator(".tree-link")).to_have_text(["/space", "a"])

    # The mouse: expand "a", then "b", then open "c".
    node_a = tree.locator(".tree-node[data-path='a']")
    toggle_a = node_a.locator(":scope > .tree-row > .tree-toggle")
    expect(toggle_a).to_have_attribute("aria-expanded", "false")
    toggle_a.click()
    expect(toggle_a).to_have_attribute("aria-expanded", "true")
    expect(node_a.locator(":scope > ul > li > .tree-row > .tree-link")).to_have_text(["b", "other"])
    tree.get_by_role("button", name="Subfolders of b").click()
    tree.get_by_role("link", name="c", exact=True).click()
    expect(page.get_by_role("navigation", name="Breadcrumb").locator("li")).to_have_text(
        ["/space", "a", "b", "c"]
    )
    expect(page.locator("#files tr[data-path='a/b/c/deep.txt']")).to_be_visible()
    # The new screen keeps the path open and marks the current folder.
    current = tree.locator(".tree-link[aria-current='location']")
    expect(current).to_have_text("c")
    screen.shot("drive-tree")

    # The keyboard: collapse "a" with ArrowLeft, open it again with ArrowRight, step down to
    # "other" and open it with Enter.
    tree.get_by_role("link", name="a", exact=True).focus()
    page.keyboard.press("ArrowLeft")
    expect(toggle_a).to_have_attribute("aria-expanded", "false")
    expect(tree.get_by_role("link", name="b", exact=True)).to_be_hidden()
    page.keyboard.press("ArrowRight")
    expect(toggle_a).to_have_attribute("aria-expanded", "true")
    page.keyboard.press("ArrowRight")
    expect(tree.get_by_role("link", name="b", exact=True)).to_be_focused()
    page.keyboard.press("ArrowDown")  # "c", below the open "b"
    page.keyboard.press("ArrowDown")
    expect(tree.get_by_role("link", name="other")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#files tr[data-path='a/other/x.txt']")).to_be_visible()
    expect(current).to_have_text("other")
    assert screen.page_errors() == []


def test_drive_tree_folds_above_the_listing_at_phone_width(phone: Screen, server: UiServer) -> None:
    assert server.api.put("/v1/space/drive/files/notes/x/y.md", content=b"# y").is_success
    page = phone.page
    phone.sign_in()
    page.get_by_role("link", name="Space Drive").click()
    folders = page.locator("details.folders")
    expect(folders).not_to_have_attribute("open", "")
    listing = page.locator("#files")
    expect(listing).to_be_visible()
    folders.locator("summary").click()
    tree = page.get_by_role("navigation", name="Folders")
    tree.get_by_role("button", name="Subfolders of notes").click()
    tree_box = tree.bounding_box()
    listing_box = listing.bounding_box()
    assert tree_box is not None and listing_box is not None
    assert tree_box["y"] + tree_box["height"] <= listing_box["y"], "the tree is not above"
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways at phone width ({width}px)"
    phone.shot("drive-tree-phone")
    tree.get_by_role("link", name="x", exact=True).click()
    expect(page.locator("#files tr[data-path='notes/x/y.md']")).to_be_visible()
    assert phone.page_errors() == []


def test_a_running_task_shows_live_output_and_is_cancelled(
    screen: Screen, server: UiServer
) -> None:
    agent = server.api.post("/v1/agents", json={"name": "Sleeper"}).json()
    session = server.api.post(f"/v1/agents/{agent['id']}/sessions", json={"title": "Long"}).json()
    # The output differs from the command line, so the panel shows what ran, not the input.
    server.model.add(
        call("shell", command="echo first-$((6*7)); sleep 0.5; echo second-$((2*3)); sleep 60")
    )
    page = screen.page
    screen.sign_in()
    page.goto(f"{server.url}/#/agents/{agent['id']}/sessions/{session['id']}")
    expect(page.locator("#stream-state")).to_have_text("Live")
    page.get_by_label("Message").fill("Take your time")
    page.get_by_role("button", name="Send").click()

    tool = page.locator(".tool")
    expect(tool.locator(".badge")).to_have_text("running")
    tool.locator(".tool-open").click()
    output = page.get_by_role("complementary", name="Tool call").locator(".tool-output")
    expect(output).to_contain_text("first-42")
    expect(output).to_contain_text("second-6")  # drawn again as it arrives
    expect(page.locator(".task-status").first).to_contain_text("running")
    screen.shot("workspace-live-output")

    cancel = page.get_by_role("button", name="Cancel task")
    expect(cancel).to_be_enabled()
    cancel.click()
    expect(page.locator(".task-status").first).to_contain_text("cancelled")
    expect(cancel).to_be_disabled()
    expect(page.locator("#sessions .badge").first).not_to_have_text("working")
    screen.shot("workspace-cancelled")
    task_id = page.locator(".task-status").first.get_attribute("data-task-id")
    assert server.api.get(f"/v1/tasks/{task_id}").json()["status"] == "cancelled"
    assert screen.page_errors() == []


def _wait_port(server: UiServer, agent_id: str, port: int) -> None:
    deadline = time.monotonic() + 15
    while port not in server.api.get(f"/v1/agents/{agent_id}/computer").json()["ports"]:
        assert time.monotonic() < deadline, f"port {port} did not open in the computer"
        time.sleep(0.1)


def test_the_computer_sleeps_wakes_restarts_and_opens_a_preview(
    screen: Screen, server: UiServer
) -> None:
    agent_id = server.api.post("/v1/agents", json={"name": "Host"}).json()["id"]
    port = free_port()
    started = server.api.post(
        f"/v1/agents/{agent_id}/computer/exec",
        json={
            "command": f"echo hello-preview > index.txt; nohup python3 -m http.server {port} "
            "--bind 127.0.0.1 > /tmp/http.log 2>&1 &"
        },
    )
    assert started.json()["exit_code"] == 0, started.text
    _wait_port(server, agent_id, port)

    page = screen.page
    screen.sign_in()
    page.goto(f"{server.url}/#/agents/{agent_id}/computer")
    state = page.locator("#computer-status .badge")
    expect(state).to_have_text("running")
    opener = page.get_by_role("button", name=f"Open port {port}")
    with page.context.expect_page() as opened:
        opener.click()
    preview = opened.value
    preview.wait_for_load_state()
    expect(preview.locator("body")).to_contain_text("index.txt")
    # The preview shares this origin: it must get neither the opener nor the key.
    assert preview.evaluate("window.opener") is None
    assert preview.evaluate("sessionStorage.length") == 0
    preview.close()
    link = page.get_by_role("link", name="signed link")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    expect(link).to_have_attribute("href", re.compile(rf"/computer/ports/{port}/\?"))
    screen.shot("computer-preview")

    page.get_by_role("button", name="Sleep").click()
    expect(state).to_have_text("sleeping")
    screen.shot("computer-sleeping")
    page.get_by_role("button", name="Wake").click()
    expect(state).to_have_text("running")
    page.get_by_role("button", name="Restart").click()
    expect(state).to_have_text("running")
    # A restart ends every process: the server is gone and so is its port.
    expect(page.locator("#ports")).to_contain_text("No program listens on a port.")
    assert port not in server.api.get(f"/v1/agents/{agent_id}/computer").json()["ports"]
    assert screen.page_errors() == []


def test_an_admin_deletes_an_agent_after_confirming_and_a_member_is_refused(
    screen: Screen, server: UiServer
) -> None:
    doomed = server.api.post("/v1/agents", json={"name": "Doomed"}).json()
    server.api.post("/v1/agents", json={"name": "Kept"})
    member = server.api.post("/v1/api-keys", json={"name": "reader", "role": "member"}).json()
    page = screen.page
    cards = page.locator("#agents .agent")

    # A member: the API refuses, and the card says why.
    page.goto(screen.url + "/")
    page.get_by_label("API key").fill(member["secret"])
    page.get_by_role("button", name="Sign in").click()
    expect(cards).to_have_count(2)
    page.get_by_role("button", name="Delete Doomed").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Doomed")
    dialog.get_by_role("button", name="Delete agent").click()
    refusal = page.locator(f"[data-agent-id='{doomed['id']}'] [role=alert]")
    expect(refusal).to_contain_text("forbidden")
    screen.shot("agents-delete-refused")
    expect(cards).to_have_count(2)
    page.get_by_role("button", name="Sign out").click()

    # The owner: Cancel keeps the agent, Delete agent removes it.
    screen.sign_in()
    page.get_by_role("button", name="Delete Doomed").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    expect(cards).to_have_count(2)
    page.get_by_role("button", name="Delete Doomed").click()
    screen.shot("agents-delete-confirm")
    page.get_by_role("dialog").get_by_role("button", name="Delete agent").click()
    expect(cards).to_have_count(1)
    expect(cards).to_contain_text("Kept")
    expect(page.locator("#agents-status")).to_have_text("Deleted Doomed.")
    names = [agent["name"] for agent in server.api.get("/v1/agents").json()["items"]]
    assert names == ["Kept"]
    assert server.api.get(f"/v1/agents/{doomed['id']}").status_code == 404
    assert screen.page_errors() == []


def _event_window() -> int:
    """The workspace's EVENT_WINDOW, read from its module so the test follows a change."""
    found = re.search(r"EVENT_WINDOW = (\d+);", (STATIC_DIR / "workspace.js").read_text())
    assert found is not None
    return int(found.group(1))


def test_a_long_session_opens_at_its_end_and_loads_earlier_events(
    screen: Screen, server: UiServer
) -> None:
    window = _event_window()
    agent = server.api.post("/v1/agents", json={"name": "Talker"}).json()
    session_id = server.api.post(f"/v1/agents/{agent['id']}/sessions", json={}).json()["id"]
    sent = 0
    while server.api.get(f"/v1/sessions/{session_id}").json()["last_seq"] <= window + 10:
        server.model.add(reply(f"answer {sent}"))
        posted = server.api.post(
            f"/v1/sessions/{session_id}/messages", json={"text": f"question {sent}"}
        )
        task_id = posted.json()["task_id"]
        deadline = time.monotonic() + 15
        while server.api.get(f"/v1/tasks/{task_id}").json()["status"] != "completed":
            assert time.monotonic() < deadline, "a task did not complete"
            time.sleep(0.02)
        sent += 1
    last_seq = server.api.get(f"/v1/sessions/{session_id}").json()["last_seq"]
    assert last_seq <= 2 * window, "one click should reach the start"

    page = screen.page
    screen.sign_in()
    page.goto(f"{server.url}/#/agents/{agent['id']}/sessions/{session_id}")
    users = page.locator(".msg.user")
    expect(users.last).to_have_text(f"question {sent - 1}")
    expect(page.locator(".msg.assistant").last).to_have_text(f"answer {sent - 1}")
    shown = users.count()
    assert 0 < shown < sent
    expect(users.first).not_to_have_text("question 0")
    screen.shot("workspace-load-earlier")

    page.get_by_role("button", name="Load earlier events").click()
    expect(users).to_have_count(sent)
    expect(users.first).to_have_text("question 0")
    expect(page.get_by_role("button", name="Load earlier events")).to_have_count(0)
    # The stream started again from there: it still follows live.
    expect(page.locator("#stream-state")).to_have_text("Live")
    server.model.add(reply("still here"))
    page.get_by_label("Message").fill("are you there?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".msg.assistant").last).to_have_text("still here")
    expect(users).to_have_count(sent + 1)
    assert screen.page_errors() == []
