"""The inbox answers a question in place; the page's event stream survives a dropped
connection without losing or repeating an event; Drive uploads and previews at phone width."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytest.importorskip("playwright", reason="playwright is not installed (pip install playwright)")

from playwright.sync_api import expect

from openbuda.testing import call, reply
from tests.web.conftest import Screen, UiServer


def _wait_task(server: UiServer, task_id: str, statuses: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        task: dict[str, Any] = server.api.get(f"/v1/tasks/{task_id}").json()
        if task["status"] in statuses or time.monotonic() > deadline:
            return task
        time.sleep(0.05)


def _asking_session(server: UiServer) -> tuple[str, str]:
    """An agent whose task waits on a choice question: (session id, task id)."""
    agent = server.api.post("/v1/agents", json={"name": "Picker", "model": "test:x"}).json()
    session = server.api.post(f"/v1/agents/{agent['id']}/sessions", json={"title": "Colours"})
    server.model.add(
        call("ask_user", prompt="Which colour?", kind="choice", options=["red", "blue"]),
        reply("Blue it is."),
    )
    sent = server.api.post(
        f"/v1/sessions/{session.json()['id']}/messages", json={"text": "pick a colour"}
    )
    task_id: str = sent.json()["task_id"]
    assert _wait_task(server, task_id, {"waiting"})["status"] == "waiting"
    return session.json()["id"], task_id


def test_a_question_is_answered_from_the_inbox(screen: Screen, server: UiServer) -> None:
    _session_id, task_id = _asking_session(server)
    page = screen.page
    screen.sign_in()
    expect(page.locator("#inbox-count")).to_have_text("1")
    page.get_by_role("link", name="Inbox").click()
    item = page.locator(f".inbox-item[data-task-id='{task_id}']")
    expect(item).to_contain_text("Picker")
    expect(item).to_contain_text("Which colour?")
    screen.shot("inbox")
    item.get_by_role("button", name="blue").click()
    expect(item).to_contain_text("Answered: blue")
    task = _wait_task(server, task_id, {"completed", "failed"})
    assert task["status"] == "completed"
    assert task["result"]["text"] == "Blue it is."
    expect(page.locator("#inbox-count")).to_be_hidden()
    assert screen.page_errors() == []


# Passes the first stream's first `keep` messages whole, then half of the next, then fails
# like a dropped connection (once the page read what came before); later streams pass
# untouched. Answers what the page saw.
_DROP = """async ({sessionId, keep}) => {
  const { followSession } = await import("/ui/api.js");
  const lastEventIds = [];
  const seen = [];
  let streams = 0;
  const cutting = async (url, init) => {
    lastEventIds.push(init.headers["Last-Event-ID"]);
    const response = await fetch(url, init);
    streams += 1;
    if (streams > 1) return response;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const encoder = new TextEncoder();
    let buffer = "";
    let passed = 0;
    let dropped = false;
    const body = new ReadableStream({
      async pull(controller) {
        if (dropped) {
          // Called once the page read all that came before: the connection drops now.
          reader.cancel();
          controller.error(new TypeError("network error"));
          return;
        }
        const { value, done } = await reader.read();
        if (done) { controller.close(); return; }
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\\n\\n")) !== -1) {
          const message = buffer.slice(0, cut + 2);
          buffer = buffer.slice(cut + 2);
          if (message.startsWith(":")) continue;
          if (passed === keep) {
            controller.enqueue(encoder.encode(message.slice(0, message.length / 2)));
            dropped = true;
            return;
          }
          controller.enqueue(encoder.encode(message));
          passed += 1;
        }
      },
    });
    return new Response(body, { status: response.status, headers: response.headers });
  };
  const controller = new AbortController();
  const states = [];
  const done = new Promise((resolve) => {
    followSession(sessionId, {
      fetchImpl: cutting,
      signal: controller.signal,
      onState: (state) => states.push(state),
      onEvent: (event) => {
        seen.push(event.seq ?? null);
        if (event.type === "task.status" && event.data.status === "completed") resolve();
      },
    });
  });
  await done;
  controller.abort();
  return { seen, lastEventIds, states };
}"""


def test_the_stream_reconnects_without_losing_or_repeating_an_event(
    screen: Screen, server: UiServer
) -> None:
    session_id, task_id = _asking_session(server)
    question = server.api.get(f"/v1/tasks/{task_id}").json()["question"]
    server.api.post(
        f"/v1/tasks/{task_id}/answer", json={"question_id": question["id"], "choice": "red"}
    )
    assert _wait_task(server, task_id, {"completed"})["status"] == "completed"
    stored = server.api.get(f"/v1/sessions/{session_id}/events").json()["items"]
    seqs = [event["seq"] for event in stored]
    assert len(seqs) > 6

    screen.sign_in()
    seen = screen.page.evaluate(_DROP, {"sessionId": session_id, "keep": 4})
    stored_seen = [seq for seq in seen["seen"] if seq is not None]
    assert stored_seen == seqs  # each stored event once, in order
    assert seen["lastEventIds"][:2] == ["0", str(seqs[3])]
    assert seen["states"][:3] == ["live", "reconnecting", "live"]


def test_drive_uploads_with_progress_and_previews_at_phone_width(
    phone: Screen, server: UiServer
) -> None:
    server.api.put("/v1/space/drive/files/data/table.csv", content=b'name,size\n"a, b",1\nc,2\n')
    page = phone.page
    phone.sign_in()
    page.get_by_role("link", name="Space Drive").click()
    page.get_by_role("link", name="data/").click()
    page.get_by_role("link", name="table.csv").click()
    expect(page.locator("#preview table th")).to_have_text(["name", "size"])
    expect(page.locator("#preview table td").first).to_have_text("a, b")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways at phone width ({width}px)"
    phone.shot("drive-phone")

    # An upload: a hostile name and content stay text.
    content = b"<img src=x onerror=alert(1)>\n" * 4000
    page.get_by_label("Upload a file here").set_input_files(
        {"name": "page.html", "mimeType": "text/html", "buffer": content}
    )
    expect(page.locator("#file-name")).to_have_text("page.html")
    expect(page.locator("#preview pre")).to_contain_text("<img src=x onerror=alert(1)>")
    assert page.locator("#preview img").count() == 0
    assert page.evaluate("document.getElementById('upload-progress').value") > 0
    stored = server.api.get("/v1/space/drive/files/data/page.html")
    assert stored.content == content
    assert phone.page_errors() == []


def test_a_text_question_is_answered_in_the_chat_at_phone_width(
    phone: Screen, server: UiServer
) -> None:
    agent = server.api.post("/v1/agents", json={"name": "Asker", "model": "test:x"}).json()
    server.model.add(
        call("ask_user", prompt="What is the project called?"),
        reply("Noted: the project is called openbuda."),
    )
    page = phone.page
    phone.sign_in()
    page.get_by_role("link", name="Asker").click()
    page.get_by_label("Message").fill("Ask me something")
    page.get_by_role("button", name="Send").click()
    page.get_by_label("Your answer").fill("openbuda <b>bold</b>")
    phone.shot("workspace-phone-question")
    page.get_by_role("button", name="Answer").click()
    expect(page.locator(".result")).to_be_visible()
    expect(page.locator(".msg.assistant")).to_have_text("Noted: the project is called openbuda.")
    expect(page.locator(".question")).to_contain_text("Answered: openbuda <b>bold</b>")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways at phone width ({width}px)"
    phone.shot("workspace-phone")
    session = server.api.get(f"/v1/agents/{agent['id']}/sessions").json()["items"][0]
    assert session["title"] == "Ask me something"
    assert phone.page_errors() == []
