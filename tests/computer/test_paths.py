"""``parse_path``: the sandbox path rules every file access and working directory goes through.

A relative path is under ``/agent``; an absolute one must lie in ``/agent``, ``/space``,
``/session`` or ``/tmp``. ``..`` is refused wherever it appears (never resolved), ``.`` and
empty names are dropped, NUL and backslashes are refused, lengths are bounded in bytes, names
are normalised to NFC, and nothing is URL-decoded: ``%2e%2e`` is a name like any other.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openbuda.computer._paths import MAX_NAME_BYTES, MAX_PATH_BYTES, SandboxPath, parse_path
from openbuda.domain.errors import InvalidPath


@pytest.mark.parametrize(
    ("path", "mount", "parts"),
    [
        ("notes.md", "agent", ("notes.md",)),
        ("a/b/c.txt", "agent", ("a", "b", "c.txt")),
        ("", "agent", ()),
        (".", "agent", ()),
        ("./a/./b/.", "agent", ("a", "b")),
        ("/agent", "agent", ()),
        ("/agent/", "agent", ()),
        ("/agent/x", "agent", ("x",)),
        ("//agent//x///y/", "agent", ("x", "y")),
        ("/agent/./x", "agent", ("x",)),
        ("/space/shared.csv", "space", ("shared.csv",)),
        ("/session/scratch/out.log", "session", ("scratch", "out.log")),
        ("/tmp", "tmp", ()),
        ("/tmp/t", "tmp", ("t",)),
        ("agent/x", "agent", ("agent", "x")),
        ("tmp", "agent", ("tmp",)),
        ("...", "agent", ("...",)),
        ("..a/a..", "agent", ("..a", "a..")),
        (". .", "agent", (". .",)),
    ],
)
def test_valid_paths_map_to_a_mount_and_names(
    path: str, mount: str, parts: tuple[str, ...]
) -> None:
    parsed = parse_path(path)
    assert (parsed.mount, parsed.parts) == (mount, parts)


def test_string_form_name_and_child() -> None:
    parsed = parse_path("docs/report.md")
    assert str(parsed) == "/agent/docs/report.md"
    assert parsed.name == "report.md"
    assert str(parsed.child("x")) == "/agent/docs/report.md/x"
    assert parse_path("/space").name == "space"
    assert str(parse_path("/session")) == "/session"


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../x",
        "../../etc/passwd",
        "x/..",
        "x/../y",
        "a/b/../../..",
        "./..",
        "/..",
        "/../agent",
        "/agent/..",
        "/agent/../etc/passwd",
        "/agent/x/../../session",
        "/tmp/..",
        "/space/../../root/.ssh/id_rsa",
        "/session/a/b/../../../tmp",
        "a/./../b",
    ],
)
def test_dot_dot_is_refused_in_every_position(path: str) -> None:
    with pytest.raises(InvalidPath, match=r"'\.\.' is not allowed"):
        parse_path(path)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/etc/passwd",
        "/etc",
        "/root",
        "/proc/1/root/etc/shadow",
        "/usr/bin/bash",
        "/agentx/y",
        "/AGENT/x",
        "/agents/x",
        "/sessions/other/x",
    ],
)
def test_absolute_paths_outside_the_mounts_are_refused(path: str) -> None:
    with pytest.raises(InvalidPath, match="outside the computer's files"):
        parse_path(path)


@pytest.mark.parametrize("path", [" /etc/shadow", "/agent/x ", "\tnotes", "a\n"])
def test_surrounding_whitespace_is_refused(path: str) -> None:
    with pytest.raises(InvalidPath, match="whitespace"):
        parse_path(path)


@pytest.mark.parametrize("path", ["a\x00b", "\x00", "/agent/x\x00/../../etc", "/etc/passwd\x00"])
def test_nul_is_refused(path: str) -> None:
    with pytest.raises(InvalidPath, match="NUL"):
        parse_path(path)


def test_nul_is_escaped_in_the_error_details() -> None:
    with pytest.raises(InvalidPath) as caught:
        parse_path("a\x00b")
    assert caught.value.details == {"path": "a\\0b"}


@pytest.mark.parametrize("path", ["a\\b", "..\\..\\etc\\passwd", "\\agent\\x", "/agent/x\\"])
def test_backslashes_are_refused(path: str) -> None:
    with pytest.raises(InvalidPath, match="backslash"):
        parse_path(path)


def test_a_name_may_be_255_bytes_not_more() -> None:
    assert parse_path("a" * MAX_NAME_BYTES).parts == ("a" * MAX_NAME_BYTES,)
    with pytest.raises(InvalidPath, match="a name may be at most 255 bytes"):
        parse_path("a" * (MAX_NAME_BYTES + 1))


def test_name_length_counts_utf8_bytes_not_characters() -> None:
    assert parse_path("é" * 127).parts == ("é" * 127,)  # 254 bytes
    with pytest.raises(InvalidPath, match="a name may be at most"):
        parse_path("é" * 128)  # 128 characters, 256 bytes


def test_a_path_may_be_4096_bytes_not_more() -> None:
    names = ["a" * 200] * 20
    fitting = "/agent/" + "/".join(names)
    fitting += "/" + "b" * (MAX_PATH_BYTES - len(fitting) - 1)
    assert len(fitting.encode()) == MAX_PATH_BYTES
    assert parse_path(fitting).mount == "agent"
    with pytest.raises(InvalidPath, match="at most 4096 bytes"):
        parse_path(fitting + "c")


def test_path_length_counts_utf8_bytes() -> None:
    with pytest.raises(InvalidPath, match="at most 4096 bytes"):
        parse_path("/".join(["ü" * 100] * 21))  # 2,100 characters, 4,220 bytes


def test_names_are_normalised_to_nfc() -> None:
    decomposed = "cafe\u0301/re\u0301sume\u0301.md"
    parsed = parse_path(decomposed)
    assert parsed.parts == ("caf\u00e9", "r\u00e9sum\u00e9.md")
    assert parsed == parse_path("caf\u00e9/r\u00e9sum\u00e9.md")
    assert all(unicodedata.is_normalized("NFC", name) for name in parsed.parts)


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("%2e%2e", ("%2e%2e",)),
        ("%2e%2e/%2e%2e/etc/passwd", ("%2e%2e", "%2e%2e", "etc", "passwd")),
        ("%2E%2E%2Fetc%2Fpasswd", ("%2E%2E%2Fetc%2Fpasswd",)),
        ("/agent/..%2f..%2fetc", ("..%2f..%2fetc",)),
        ("%00", ("%00",)),
        ("%5c..%5c", ("%5c..%5c",)),
        ("\uff0e\uff0e/x", ("\uff0e\uff0e", "x")),  # fullwidth dots: NFC keeps them
        ("\u2024\u2024", ("\u2024\u2024",)),  # one-dot leaders
    ],
)
def test_encoded_and_lookalike_dots_are_plain_names(path: str, parts: tuple[str, ...]) -> None:
    assert parse_path(path) == SandboxPath("agent", parts)


def test_a_non_string_is_refused() -> None:
    with pytest.raises(InvalidPath, match="must be a string"):
        parse_path(b"/agent/x")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def test_errors_are_invalid_path_with_the_path_in_details() -> None:
    with pytest.raises(InvalidPath) as caught:
        parse_path("/etc/passwd")
    assert caught.value.code == "invalid_path"
    assert caught.value.details == {"path": "/etc/passwd"}
    assert "'/etc/passwd'" in str(caught.value)


_ALPHABET = st.sampled_from(["a", "b", "/", ".", "..", "\\", "\x00", "é", "e\u0301", " ", "%2e"])


@given(st.lists(_ALPHABET, max_size=30).map("".join))
def test_any_accepted_path_is_clean_and_stable(path: str) -> None:
    """Whatever is accepted has only plain names and means the same when parsed again."""
    try:
        parsed = parse_path(path)
    except InvalidPath:
        return
    for name in parsed.parts:
        assert name not in ("", ".", "..")
        assert "/" not in name and "\\" not in name and "\x00" not in name
        assert unicodedata.is_normalized("NFC", name)
    assert parse_path(str(parsed)) == parsed
    if not path.strip().startswith("/"):
        assert parsed.mount == "agent"
