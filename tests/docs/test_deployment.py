"""docs/deployment.md says what the code does: every ``openbuda`` command and option it shows
exists, every ``OPENBUDA_*`` variable it names is a setting, the defaults in its table and its
connection counts are the code's, and its ``status --json`` example has the real keys."""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer.core
import typer.main

from openbuda.cli.main import app
from openbuda.cli.ops import status_json
from openbuda.ports import ClusterStatus, ProcessInfo, SpaceQueue
from openbuda.settings import Settings
from openbuda.stores import postgres
from openbuda.stores.sql import MIGRATION_WAIT_S

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", TEXT, flags=re.DOTALL)


def _invocations(text: str) -> list[list[str]]:
    """``openbuda COMMAND [ARGS]`` as ``text`` writes it, in shell and unit blocks and in
    inline code."""
    blocks = re.findall(r"```(\w+)\n(.*?)```", text, flags=re.DOTALL)
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    lines = [line for kind, block in blocks if kind in ("sh", "ini") for line in block.split("\n")]
    found: list[list[str]] = []
    for line in [*lines, *re.findall(r"`([^`\n]+)`", prose)]:
        line = line.split(" #", 1)[0].rstrip(")")
        for match in re.finditer(r"(?:^|[ /=(])openbuda( [a-z].*)$", line):
            found.append(shlex.split(match.group(1)))
    return found


@pytest.mark.parametrize("page", ["docs/deployment.md", "README.md"])
def test_the_commands_and_options_shown_exist(page: str) -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, typer.core.TyperGroup)
    invocations = _invocations((ROOT / page).read_text(encoding="utf-8"))
    shown = {words[0] for words in invocations}
    assert {"serve", "worker", "migrate", "status"} <= shown, shown
    for words in invocations:
        command: Any = root
        used: list[str] = []
        while isinstance(command, typer.core.TyperGroup) and words[len(used) :] not in ([], ["…"]):
            name = words[len(used)]
            command = command.commands.get(name)
            assert command is not None, f"{page} shows an unknown command: openbuda {words}"
            used.append(name)
        options = {
            name
            for parameter in command.params
            for name in (*parameter.opts, *parameter.secondary_opts)
        }
        arguments = words[len(used) :]
        for word in arguments[: arguments.index("--")] if "--" in arguments else arguments:
            if word.startswith("--"):
                option = word.split("=", 1)[0]
                assert option in options, f"openbuda {' '.join(used)} has no option {option}"


def test_every_openbuda_variable_named_is_a_setting() -> None:
    named = set(re.findall(r"\bOPENBUDA_([A-Z0-9_]+)", TEXT))
    assert "DATABASE_URL" in named and "DRIVE_BLOBS" in named
    unknown = {name for name in named if name.lower() not in Settings.model_fields}
    assert not unknown, f"docs/deployment.md names settings that do not exist: {unknown}"


def _table_defaults() -> dict[str, str]:
    rows = re.findall(r"^\| `OPENBUDA_([A-Z_]+)` \| ([^|]+) \|", TEXT, flags=re.MULTILINE)
    return {name.lower(): default.strip() for name, default in rows}


@pytest.mark.parametrize("field", sorted(_table_defaults()))
def test_the_table_of_settings_states_the_defaults(field: str) -> None:
    stated = _table_defaults()[field]
    default: Any = Settings.model_fields[field].default
    if default is None:
        assert "`" not in stated, f"{field}: no default in the code, the docs say {stated}"
        return
    value = stated.strip("`")
    if isinstance(default, bool):
        assert value == str(default).lower()
    else:
        assert float(value) == default, f"{field}: the docs say {value}, the code {default}"


def test_the_wait_for_a_database_at_start_is_the_code_s() -> None:
    assert f"waits for it (up to {MIGRATION_WAIT_S / 60:.0f} minutes)" in TEXT


def test_the_connection_counts_are_the_code_s() -> None:
    kept, more = postgres._POOL_SIZE, postgres._POOL_OVERFLOW
    assert f"a pool of up to {kept} connections kept open and {more}" in TEXT
    assert f"up to {kept + more + 2} per process" in TEXT
    assert f"Size `max_connections` for {kept + more + 2} ×" in TEXT


def test_the_status_json_example_has_the_real_keys() -> None:
    [example] = [block for kind, block in BLOCKS if kind == "json"]
    shown = json.loads(example)
    now = datetime.now(UTC)
    real = status_json(
        ClusterStatus(
            now=now,
            processes=[ProcessInfo("w", "worker", "h", 1, "0", now, now, 2, 1)],
            spaces=[SpaceQueue("spc_1", 1, 2, 0, now)],
            expired_leases=0,
        ),
        lease_seconds=30.0,
        database="sqlite",
    )
    assert list(shown) == list(real)
    assert list(shown["processes"][0]) == list(real["processes"][0])
    assert list(shown["spaces"][0]) == list(real["spaces"][0])
    assert list(shown["totals"]) == list(real["totals"])
