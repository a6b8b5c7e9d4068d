"""``network: internet`` for a sandbox in its own network namespace: slirp4netns plus a host
filter that keeps it off the host's loopback and private ranges.

A sandbox made with ``bwrap --unshare-net`` has only a loopback interface.
``attach_internet(pid, uid=..., log_path=...)`` starts ``slirp4netns --configure`` for the
sandbox process ``pid``: a user-mode TCP/IP stack that gives the namespace a ``tap0``
(``10.0.2.100/24``, gateway ``10.0.2.2``, DNS ``10.0.2.3``) and turns its connections into
ordinary sockets of the slirp4netns process on the host. It runs

- as the agent's host ``uid`` (and gid ``uid``, no supplementary groups), so every socket it
  opens for the sandbox belongs to that uid, which the host filter matches. It joins the user
  namespace of ``pid`` (owned by that uid) to reach the network namespace. It needs
  ``/dev/net/tun`` open to others (mode 0666, as udev sets it on a standard Debian; machines
  without udev leave it 0600, and then ``attach_internet`` running as root sets 0666: opening it
  grants nothing by itself, creating an interface needs ``CAP_NET_ADMIN`` in the namespace);
- with ``--disable-host-loopback`` (``10.0.2.2`` does not lead to the host's ``127.0.0.1``),
  ``--enable-sandbox`` (its own empty root, capabilities dropped), ``--enable-seccomp`` when
  the build supports it, ``--exit-fd`` (it exits when the :class:`InternetLink` is closed or
  this process dies) and ``--ready-fd`` (awaited before returning, up to a timeout).

slirp4netns connects wherever the sandbox asks, including the host's own addresses.
``ensure_host_filter(first, last)`` is the other half (root and ``iptables`` needed): a chain
of our own, jumped to from ``OUTPUT``, that rejects packets from sockets owned by uids
``first..last`` to loopback, private, link-local, shared, documentation and multicast ranges
(IPv4 and IPv6), except DNS (port 53) to the resolvers of ``/etc/resolv.conf``, which slirp's
``10.0.2.3`` forwards to. The chain is rewritten atomically (``iptables-restore --noflush``) on
every call, so it is idempotent and follows a changed uid range. Without it, ``network:
internet`` reaches the host's private network: the caller warns loudly.

Debian packages: ``slirp4netns``, ``iptables`` (its nft backend is fine).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
import anyio.to_thread

__all__ = [
    "CHAIN",
    "InternetLink",
    "NetworkUnavailable",
    "attach_internet",
    "ensure_host_filter",
    "remove_host_filter",
]

log = logging.getLogger("openbuda.computer")

CHAIN: Final = "OPENBUDA-SANDBOX"
SANDBOX_ADDRESS: Final = "10.0.2.100"
_TUN = Path("/dev/net/tun")
_READY_SECONDS: Final = 10.0
_EXIT_SECONDS: Final = 2.0

BLOCKED_V4: Final = (
    "0.0.0.0/8",  # "this network": connect(0.0.0.0) reaches the host itself
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",  # link-local, cloud metadata services
    "100.64.0.0/10",  # carrier-grade NAT
    "192.0.0.0/24",
    "192.0.2.0/24",  # TEST-NET-1 (this project's machines use it as their private network)
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved and broadcast
)
BLOCKED_V6: Final = (
    "::/128",
    "::1/128",
    "::ffff:0:0/96",  # IPv4-mapped
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "2001:db8::/32",  # documentation
    "ff00::/8",  # multicast
)


class NetworkUnavailable(Exception):
    """The sandbox's internet link cannot be set up (the message carries slirp4netns's log)."""


# ---------------------------------------------------------------------------------------------
# slirp4netns


@dataclass(eq=False)
class InternetLink:
    """A running slirp4netns attached to a sandbox; ``aclose`` stops it."""

    process: anyio.abc.Process
    log_path: Path
    _exit_fd: int | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def aclose(self) -> None:
        if self._exit_fd is not None:
            os.close(self._exit_fd)  # slirp4netns exits on EOF of its --exit-fd
            self._exit_fd = None
        with anyio.move_on_after(_EXIT_SECONDS, shield=True):
            await self.process.wait()
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with anyio.CancelScope(shield=True):
            await self.process.wait()


def _log_tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


def _seccomp_supported() -> bool:
    try:
        out = subprocess.run(
            ["slirp4netns", "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "libseccomp" in out.stdout


def _ensure_tun_access() -> None:
    try:
        mode = _TUN.stat().st_mode
    except OSError as exc:
        raise NetworkUnavailable(f"{_TUN} is missing ({exc.strerror})") from exc
    wanted = stat.S_IROTH | stat.S_IWOTH
    if mode & wanted == wanted:
        return
    if os.geteuid() != 0:
        raise NetworkUnavailable(f"{_TUN} is not open to other users (chmod 0666 {_TUN})")
    log.warning("setting %s to mode 0666 (as udev does on a standard Debian)", _TUN)
    os.chmod(_TUN, 0o666)


def slirp_argv(
    pid: int, *, ready_fd: int, exit_fd: int, seccomp: bool, userns_fd: int | None = None
) -> list[str]:
    argv = [
        "slirp4netns",
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        "--enable-sandbox",
        f"--ready-fd={ready_fd}",
        f"--exit-fd={exit_fd}",
    ]
    if seccomp:
        argv.append("--enable-seccomp")
    if userns_fd is not None:
        argv.append(f"--userns-path=/proc/self/fd/{userns_fd}")
    return [*argv, str(pid), "tap0"]


_NS_GET_USERNS: Final = 0xB701


def _netns_owner(pid: int) -> int | None:
    """A descriptor of the user namespace that owns ``pid``'s network namespace.

    slirp4netns joins ``pid``'s own user namespace by default; with ``bwrap --disable-userns``
    that is a nested one without rights over the network namespace (``setns`` fails with
    EPERM), so it is told the owner's instead. ``None`` when the kernel cannot say."""
    try:
        netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return fcntl.ioctl(netns, _NS_GET_USERNS)
    except OSError:
        return None
    finally:
        os.close(netns)


async def attach_internet(
    pid: int, *, uid: int | None, log_path: Path, ready_timeout: float = _READY_SECONDS
) -> InternetLink:
    """Start slirp4netns for the network namespace of sandbox process ``pid`` (module doc).

    ``pid`` is a process of a sandbox whose user namespace is owned by host ``uid`` (bubblewrap
    started as that uid; ``--info-fd`` gives its ``child-pid``). ``uid`` None runs it as this process's user (a server that is not root); its sockets are
    then this user's and ``ensure_host_filter`` cannot tell them apart.
    """
    if shutil.which("slirp4netns") is None:
        raise NetworkUnavailable("slirp4netns is not installed (apt-get install slirp4netns)")
    if uid is not None:
        await anyio.to_thread.run_sync(_ensure_tun_access)
    seccomp = await anyio.to_thread.run_sync(_seccomp_supported)
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    userns_fd = _netns_owner(pid)
    process: anyio.abc.Process | None = None
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log_file:
            try:
                process = await anyio.open_process(
                    slirp_argv(
                        pid,
                        ready_fd=ready_w,
                        exit_fd=exit_r,
                        seccomp=seccomp,
                        userns_fd=userns_fd,
                    ),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    pass_fds=(ready_w, exit_r)
                    if userns_fd is None
                    else (ready_w, exit_r, userns_fd),
                    user=uid,
                    group=uid,
                    extra_groups=None if uid is None else [],
                )
            except OSError as exc:
                raise NetworkUnavailable(f"cannot start slirp4netns: {exc}") from exc
        os.close(ready_w)
        os.close(exit_r)
        ready_w = exit_r = -1
        ready = b""
        with anyio.move_on_after(ready_timeout):
            await anyio.wait_readable(ready_r)
            ready = os.read(ready_r, 1)  # b"" (EOF) when slirp4netns died
        if ready != b"1":
            raise NetworkUnavailable(
                f"slirp4netns did not configure the network of pid {pid}: "
                f"{_log_tail(log_path) or 'no output'}"
            )
    except BaseException:
        for fd in (ready_w, exit_r, exit_w):
            if fd >= 0:
                os.close(fd)
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
        raise
    finally:
        os.close(ready_r)
        if userns_fd is not None:
            os.close(userns_fd)
    return InternetLink(process=process, log_path=log_path, _exit_fd=exit_w)


# ---------------------------------------------------------------------------------------------
# The host filter


def resolvers(
    resolv_conf: Path = Path("/etc/resolv.conf"),
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                found.append(ipaddress.ip_address(parts[1].split("%", 1)[0]))
    return found


def filter_rules(
    uid_first: int,
    uid_last: int,
    *,
    version: int,
    chain: str,
    resolv_conf: Path = Path("/etc/resolv.conf"),
) -> str:
    """The ``iptables-restore --noflush`` input that (re)writes ``chain``."""
    lines = ["*filter", f":{chain} - [0:0]"]
    lines.append(f"-A {chain} -m owner ! --uid-owner {uid_first}-{uid_last} -j RETURN")
    bits = 32 if version == 4 else 128
    for address in resolvers(resolv_conf):
        if address.version == version:
            for proto in ("udp", "tcp"):
                lines.append(f"-A {chain} -d {address}/{bits} -p {proto} --dport 53 -j RETURN")
    for network in BLOCKED_V4 if version == 4 else BLOCKED_V6:
        # a TCP reset makes slirp4netns refuse the sandbox's connection at once (an ICMP error
        # leaves it to time out); other protocols get the default ICMP port unreachable
        lines.append(f"-A {chain} -d {network} -p tcp -j REJECT --reject-with tcp-reset")
        lines.append(f"-A {chain} -d {network} -j REJECT")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _iptables(version: int) -> tuple[str, str]:
    return ("iptables", "iptables-restore") if version == 4 else ("ip6tables", "ip6tables-restore")


def _install(version: int, text: str, chain: str) -> None:
    tool, restore = _iptables(version)
    subprocess.run(
        [restore, "-w", "5", "--noflush"], input=text, text=True, check=True, capture_output=True
    )
    jump = ["OUTPUT", "-j", chain]
    if subprocess.run([tool, "-w", "5", "-C", *jump], capture_output=True).returncode != 0:
        subprocess.run([tool, "-w", "5", "-I", *jump], check=True, capture_output=True)


def ensure_host_filter(
    uid_first: int,
    uid_last: int,
    *,
    chain: str = CHAIN,
    resolv_conf: Path = Path("/etc/resolv.conf"),
) -> bool:
    """Install or refresh the filter (module docstring); False when it cannot (not root, no
    iptables, or a command failed: the reason is logged)."""
    if not 0 <= uid_first <= uid_last:
        raise ValueError(f"bad uid range {uid_first!r}..{uid_last!r}")
    if os.geteuid() != 0:
        log.warning("the host network filter needs root")
        return False
    versions = [4]
    if Path("/proc/net/if_inet6").exists():
        versions.append(6)
    for version in versions:
        tool, restore = _iptables(version)
        if not (shutil.which(tool) and shutil.which(restore)):
            log.warning("%s is not installed (apt-get install iptables)", tool)
            return False
        text = filter_rules(
            uid_first, uid_last, version=version, chain=chain, resolv_conf=resolv_conf
        )
        try:
            _install(version, text, chain)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            log.warning("cannot install the %s chain %s: %s", tool, chain, str(detail).strip())
            return False
    return True


def remove_host_filter(*, chain: str = CHAIN) -> None:
    """Remove the chain and its jump (for tests and uninstalling); missing ones are ignored."""
    for version in (4, 6):
        tool, _ = _iptables(version)
        if not shutil.which(tool):
            continue
        while (
            subprocess.run(
                [tool, "-w", "5", "-D", "OUTPUT", "-j", chain], capture_output=True
            ).returncode
            == 0
        ):
            pass
        subprocess.run([tool, "-w", "5", "-F", chain], capture_output=True)
        subprocess.run([tool, "-w", "5", "-X", chain], capture_output=True)
