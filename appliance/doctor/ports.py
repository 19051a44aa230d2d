"""Network probes for the doctor: can a port be bound, who listens on it, can a peer be
reached, does a DICOM peer answer C-ECHO.

Who holds a port is read from ``/proc/net/tcp{,6}`` (the listening socket's inode) and
``/proc/<pid>/fd`` (which process has that socket open); a process of another user is
not visible to a non-root doctor, so the holder may be unknown.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path


def is_wildcard(address: str) -> bool:
    """Whether binding `address` listens on every interface: "", "*" or the unspecified
    IPv4 / IPv6 address."""
    if address.strip() in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(address.strip()).is_unspecified
    except ValueError:
        return False  # a host name: resolved by the bind itself


_LISTEN = "0A"


@dataclass(frozen=True)
class PortState:
    """The result of trying to bind ``address:port`` the way the node's servers do."""

    free: bool
    error: str | None  # errno name when not free: EADDRINUSE, EACCES, EADDRNOTAVAIL, ...
    message: str  # the OS's words, or how the address could not be resolved
    holders: tuple[int, ...]  # pids with a socket listening on the port (where visible)


def probe_bind(address: str, port: int) -> PortState:
    """Try to bind `address`:`port` (SO_REUSEADDR, as socketserver does) and let go."""
    try:
        infos = socket.getaddrinfo(address or None, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return PortState(False, "EAI", f"{address!r} does not resolve ({exc})", ())
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
            s.listen(1)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            return PortState(False, name, exc.strerror or str(exc), listeners(port))
    return PortState(True, None, "free", ())


def listeners(port: int) -> tuple[int, ...]:
    """Pids of processes with a TCP socket listening on `port`, as far as /proc shows."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16) if len(fields) > 9 else -1
            if local_port == port and fields[3] == _LISTEN:
                inodes.add(fields[9])
    if not inodes:
        return ()
    wanted = {f"socket:[{i}]" for i in inodes}
    pids: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = os.listdir(proc / "fd")
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                if os.readlink(proc / "fd" / fd) in wanted:
                    pids.append(int(proc.name))
                    break
            except OSError:
                continue
    return tuple(sorted(pids))


def tcp_reachable(host: str, port: int, timeout_s: float) -> str | None:
    """None when a TCP connection to `host`:`port` opens within `timeout_s`, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def c_echo(host: str, port: int, called: str, calling: str, timeout_s: float) -> str | None:
    """None when `called` at `host`:`port` answers a C-ECHO from `calling` with success."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        if assoc.is_rejected:
            return f"the association was rejected (is {calling!r} allowed to call {called!r}?)"
        return "no association (aborted or timed out)"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        return "no answer to the C-ECHO"
    return None if int(code) == 0 else f"C-ECHO answered status 0x{int(code):04X}"


def descendants(pid: int) -> set[int]:
    """The pids of every process below `pid` (from the parent pids in /proc/*/stat)."""
    parent: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1:
            parent[int(proc.name)] = int(fields[1])
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        children = [c for c, pp in parent.items() if pp == p and c not in found]
        found.update(children)
        frontier.extend(children)
    return found
