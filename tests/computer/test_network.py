"""``network: internet``: slirp4netns gives a bubblewrap sandbox an interface, and the host
filter keeps it off the host's loopback and private addresses (root only). The control case,
the same sandbox without the filter, reaches the host's private address: the filter does the
blocking. No external address is ever contacted.

The sandbox runs as host uid ``TEST_UID``, outside the default agent uid range, so a
production ``OPENBUDA-SANDBOX`` chain left on this machine cannot decide the control case; the
filter under test is a chain of its own, removed at teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from openbuda.computer._network import (
    SANDBOX_ADDRESS,
    InternetLink,
    NetworkUnavailable,
    attach_internet,
    ensure_host_filter,
    filter_rules,
    remove_host_filter,
)

TEST_UID = 190_050
TEST_CHAIN = f"OBTEST-{os.getpid()}"
REFUSED = {"ECONNREFUSED", "ENETUNREACH", "EHOSTUNREACH"}

needs_root_network = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(shutil.which(t) for t in ("bwrap", "slirp4netns", "iptables", "nsenter")),
    reason="needs root, bubblewrap, slirp4netns, iptables and nsenter",
)


# ---------------------------------------------------------------------------------------------
# Rules (no root needed)


def test_rules_exempt_dns_to_the_resolvers_then_reject_private_ranges(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# comment\nnameserver 10.255.255.53\nnameserver fd00::53\nsearch x\n")
    v4 = filter_rules(200_000, 299_999, version=4, chain="C", resolv_conf=resolv).splitlines()
    assert v4[:3] == [
        "*filter",
        ":C - [0:0]",
        "-A C -m owner ! --uid-owner 200000-299999 -j RETURN",
    ]
    assert v4[3:5] == [
        "-A C -d 10.255.255.53/32 -p udp --dport 53 -j RETURN",
        "-A C -d 10.255.255.53/32 -p tcp --dport 53 -j RETURN",
    ]
    for network in ("127.0.0.0/8", "10.0.0.0/8", "192.0.2.0/24", "169.254.0.0/16"):
        assert f"-A C -d {network} -p tcp -j REJECT --reject-with tcp-reset" in v4
        assert f"-A C -d {network} -j REJECT" in v4
    assert v4[-1] == "COMMIT"
    assert not any("fd00::53" in line for line in v4)
    v6 = filter_rules(5, 6, version=6, chain="C", resolv_conf=resolv).splitlines()
    assert "-A C -d fd00::53/128 -p udp --dport 53 -j RETURN" in v6
    assert "-A C -d ::1/128 -j REJECT" in v6 and "-A C -d fc00::/7 -j REJECT" in v6
    assert v6.index("-A C -d fd00::53/128 -p tcp --dport 53 -j RETURN") < v6.index(
        "-A C -d fc00::/7 -j REJECT"
    )


def test_a_bad_uid_range_is_refused() -> None:
    with pytest.raises(ValueError, match="bad uid range"):
        ensure_host_filter(10, 5, chain=TEST_CHAIN)


# ---------------------------------------------------------------------------------------------
# A real sandbox


@dataclass
class Sandbox:
    process: subprocess.Popen[bytes]
    pid: int
    """The sandboxed process (bwrap's child), whose namespaces slirp4netns joins."""

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a host binary as root inside the sandbox's network namespace only."""
        return subprocess.run(
            ["nsenter", f"--target={self.pid}", "--net", *argv],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def connect(self, host: str, port: int) -> str:
        script = (
            "import errno, socket\n"
            "try:\n"
            f"    socket.create_connection(({host!r}, {port}), timeout=3).close()\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print(errno.errorcode.get(exc.errno, 'timeout'))\n"
        )
        return self.run(sys.executable, "-c", script).stdout.strip()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    info_r, info_w = os.pipe()
    argv = ["bwrap", "--unshare-all", "--uid", "0", "--gid", "0", "--cap-add", "ALL"]
    argv += ["--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib"]
    argv += ["--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--info-fd", str(info_w), "--", "sleep", "60"]
    process = subprocess.Popen(
        argv, pass_fds=(info_w,), user=TEST_UID, group=TEST_UID, extra_groups=[]
    )
    os.close(info_w)
    try:
        with os.fdopen(info_r, "rb") as info:
            pid = json.loads(info.read())["child-pid"]
        yield Sandbox(process, pid)
    finally:
        process.kill()
        process.wait()


@dataclass
class Listeners:
    loopback_port: int
    private_host: str
    private_port: int


def _host_private_ipv4() -> str | None:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        return line.split()[3].split("/")[0]
    return None


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    private = _host_private_ipv4()
    if private is None:
        pytest.skip("the host has no global IPv4 address to stand in for its private network")
    sockets = [socket.create_server(("127.0.0.1", 0)), socket.create_server((private, 0))]
    try:
        yield Listeners(
            loopback_port=sockets[0].getsockname()[1],
            private_host=private,
            private_port=sockets[1].getsockname()[1],
        )
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture
def host_filter() -> Iterator[str]:
    try:
        yield TEST_CHAIN
    finally:
        remove_host_filter(chain=TEST_CHAIN)
        listing = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
        assert TEST_CHAIN not in listing


@pytest.fixture
async def link(sandbox: Sandbox, tmp_path: Path) -> AsyncIterator[InternetLink]:
    attached = await attach_internet(sandbox.pid, uid=TEST_UID, log_path=tmp_path / "slirp.log")
    try:
        yield attached
    finally:
        await attached.aclose()


@needs_root_network
@pytest.mark.anyio
async def test_internet_sandbox_cannot_reach_host_loopback_or_private_addresses(
    sandbox: Sandbox, link: InternetLink, listeners: Listeners, host_filter: str
) -> None:
    assert ensure_host_filter(TEST_UID, TEST_UID, chain=host_filter)
    addresses = sandbox.run("ip", "-4", "-o", "addr").stdout
    assert f"tap0    inet {SANDBOX_ADDRESS}/24" in addresses
    assert link.running
    # the host's loopback: through slirp's gateway, and 127.0.0.1 is the sandbox's own
    assert sandbox.connect("10.0.2.2", listeners.loopback_port) in REFUSED
    assert sandbox.connect("127.0.0.1", listeners.loopback_port) in REFUSED
    # the host's private address (its eth0), refused at once rather than left to time out
    assert sandbox.connect(listeners.private_host, listeners.private_port) == "ECONNREFUSED"


@needs_root_network
@pytest.mark.anyio
async def test_control_without_the_filter_the_private_address_is_reachable(
    sandbox: Sandbox, link: InternetLink, listeners: Listeners
) -> None:
    assert link.running
    assert sandbox.connect(listeners.private_host, listeners.private_port) == "connected"
    # --disable-host-loopback still holds without the filter
    assert sandbox.connect("10.0.2.2", listeners.loopback_port) in REFUSED


@needs_root_network
@pytest.mark.anyio
async def test_closing_the_link_stops_slirp_and_removes_the_interface(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    link = await attach_internet(sandbox.pid, uid=TEST_UID, log_path=tmp_path / "slirp.log")
    assert SANDBOX_ADDRESS in sandbox.run("ip", "-4", "-o", "addr").stdout
    status = await anyio.Path(f"/proc/{link.process.pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(TEST_UID)] * 4  # its sockets are the agent's
    groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
    assert groups.split() == ["Groups:"]  # no supplementary groups (root's are dropped)
    await link.aclose()
    assert not link.running
    assert SANDBOX_ADDRESS not in sandbox.run("ip", "-4", "-o", "addr").stdout
    await link.aclose()  # twice is fine


@needs_root_network
@pytest.mark.anyio
async def test_a_failed_attach_raises_with_the_log(tmp_path: Path) -> None:
    gone = await anyio.open_process(["true"])
    await gone.wait()
    with pytest.raises(NetworkUnavailable, match="did not configure") as caught:
        await attach_internet(gone.pid, uid=TEST_UID, log_path=tmp_path / "slirp.log")
    assert f"/proc/{gone.pid}/ns/net: No such file or directory" in str(caught.value)  # its log


@needs_root_network
def test_the_filter_is_idempotent_and_follows_the_range(host_filter: str) -> None:
    assert ensure_host_filter(TEST_UID, TEST_UID, chain=host_filter)
    first = subprocess.run(["iptables", "-S", host_filter], capture_output=True, text=True)
    assert ensure_host_filter(TEST_UID, TEST_UID, chain=host_filter)
    second = subprocess.run(["iptables", "-S", host_filter], capture_output=True, text=True)
    assert first.stdout == second.stdout and "REJECT" in first.stdout
    assert ensure_host_filter(TEST_UID, TEST_UID + 9, chain=host_filter)
    third = subprocess.run(["iptables", "-S", host_filter], capture_output=True, text=True)
    assert f"--uid-owner {TEST_UID}-{TEST_UID + 9}" in third.stdout
    assert third.stdout.count("--uid-owner") == 1
    output = subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, text=True)
    assert output.stdout.count(f"-j {host_filter}") == 1
