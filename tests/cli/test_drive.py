"""``openbuda drive ls|get|put|rm|history|diff|restore`` and ``openbuda sessions save``
against a real server (uvicorn on a thread), through typer's CliRunner."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbuda.testing import ScriptedModel, reply
from tests.cli.test_cli import as_json, ok, run
from tests.client.live_server import LiveServer, live_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(tmp_path / "server", ScriptedModel()) as running:
        yield running


def test_put_ls_get_on_the_space_drive_and_an_agents(server: LiveServer, tmp_path: Path) -> None:
    agent = as_json(run(server, "agents", "create", "keeper", "--json"))
    local = tmp_path / "plan.md"
    local.write_text("# Plan\none\n")
    wrote = ok(run(server, "drive", "put", str(local), "notes/plan.md"))
    assert "wrote notes/plan.md in the Space Drive: version 1" in wrote.stdout
    data = os.urandom(300_000)
    (tmp_path / "blob.bin").write_bytes(data)
    entry = as_json(
        run(
            server,
            "drive",
            "put",
            str(tmp_path / "blob.bin"),
            "b.bin",
            "--agent",
            "keeper",
            "--json",
        )
    )
    assert entry["size"] == len(data) and entry["version"] == 1

    listed = ok(run(server, "drive", "ls"))
    assert "notes/" in listed.stdout and "b.bin" not in listed.stdout
    inside = as_json(run(server, "drive", "ls", "notes", "--json"))
    assert [e["path"] for e in inside] == ["notes/plan.md"]
    mine = as_json(run(server, "drive", "ls", "--agent", agent["id"], "--json"))
    assert [e["path"] for e in mine] == ["b.bin"]
    # OPENBUDA_AGENT picks the agent's Drive; --space insists on the Space Drive
    via_env = as_json(run(server, "drive", "ls", "--json", OPENBUDA_AGENT="keeper"))
    assert [e["path"] for e in via_env] == ["b.bin"]
    space = as_json(run(server, "drive", "ls", "-r", "--space", "--json", OPENBUDA_AGENT="keeper"))
    assert [e["path"] for e in space] == ["notes/plan.md"]

    printed = ok(run(server, "drive", "get", "notes/plan.md"))
    assert printed.stdout == "# Plan\none\n"
    out = tmp_path / "copy.bin"
    got = ok(run(server, "drive", "get", "b.bin", "-o", str(out), "--agent", "keeper"))
    assert out.read_bytes() == data and f"wrote {out}" in got.stdout.replace("\n", "")

    missing = run(server, "drive", "get", "b.bin")  # not in the Space Drive
    assert missing.exit_code == 1 and "not_found" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = run(server, "drive", "put", str(local), "../escape.md")
    assert bad.exit_code == 1 and "invalid_path" in bad.stderr
    unreadable = run(server, "drive", "put", str(tmp_path / "nope.txt"), "x.txt")
    assert unreadable.exit_code != 0 and "cannot read" in unreadable.stderr
    nobody = run(server, "drive", "ls", "--agent", "nobody")
    assert nobody.exit_code == 1 and "no agent has the id or name 'nobody'" in nobody.stderr


def test_put_from_stdin_history_diff_rm_restore(server: LiveServer) -> None:
    ok(run(server, "drive", "put", "-", "t.txt", input="alpha\nbeta\n"))
    ok(run(server, "drive", "put", "-", "t.txt", input="alpha\ngamma\n"))
    diff = ok(run(server, "drive", "diff", "t.txt", "--from", "1"))
    assert diff.stdout == "--- t.txt@1\n+++ t.txt@2\n@@ -1,2 +1,2 @@\n alpha\n-beta\n+gamma\n"
    same = ok(run(server, "drive", "diff", "t.txt", "--from", "2", "--to", "2"))
    assert "no changes" in same.stdout

    removed = ok(run(server, "drive", "rm", "t.txt"))
    assert "deleted t.txt in the Space Drive (version 3)" in removed.stdout
    assert run(server, "drive", "get", "t.txt").exit_code == 1
    old = ok(run(server, "drive", "get", "t.txt", "--version", "1"))
    assert old.stdout == "alpha\nbeta\n"

    history = ok(run(server, "drive", "history", "t.txt"))
    lines = [line.split() for line in history.stdout.strip().splitlines()]
    assert [line[:2] for line in lines[1:]] == [["3", "delete"], ["2", "write"], ["1", "write"]]
    with server.client() as client:
        member = client.me().member.id
    assert member in history.stdout

    restored = ok(run(server, "drive", "restore", "t.txt", "--version", "2"))
    assert "restored version 2 of t.txt in the Space Drive: version 4" in restored.stdout
    assert ok(run(server, "drive", "get", "t.txt")).stdout == "alpha\ngamma\n"
    versions = as_json(run(server, "drive", "history", "t.txt", "--json"))
    assert versions["items"][0]["op"] == "restore" and versions["items"][0]["restored_from"] == 2
    as_data = as_json(run(server, "drive", "diff", "t.txt", "--from", "1", "--json"))
    assert as_data["from"] == 1 and as_data["to"] == 4


def test_sessions_save(server: LiveServer) -> None:
    with server.client() as client:
        agent = client.agents.create("keeper")
        session = client.sessions.create(agent.id, title="plan")
        server.model.add(reply("Four."))
        accepted = client.sessions.send(session.id, "2 + 2?")
        with client.sessions.stream(session.id, until_idle=True) as events:
            list(events)

    saved = ok(run(server, "sessions", "save", session.id, "sessions/plan.md"))
    assert f"saved {session.id} to sessions/plan.md in the agent's Drive" in saved.stdout
    text = ok(run(server, "drive", "get", "sessions/plan.md", "--agent", "keeper")).stdout
    assert "2 + 2?" in text and "Four." in text
    entry = as_json(
        run(
            server,
            "sessions",
            "save",
            session.id,
            "r.md",
            "--space",
            "--task",
            accepted.task_id,
            "--json",
        )
    )
    assert entry["path"] == "r.md" and entry["version"] == 1
    assert "Four." in ok(run(server, "drive", "get", "r.md")).stdout
    missing = run(server, "sessions", "save", "ses_missing", "x.md")
    assert missing.exit_code == 1 and "not_found" in missing.stderr
