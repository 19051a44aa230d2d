"""Doctor checks of the node's network ends: the DICOM receiver's port, the DICOM
destination the results are sent to, the metrics endpoint's port.

A port must be free, or held by this node's own running service (its pid from the
service status file); anything else holding it blocks the start. A
peer that does not answer is a warning: the node queues what it sends and retries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from appliance.config import NodeConfig
from appliance.doctor.findings import Finding
from appliance.doctor.ports import c_echo, descendants, is_wildcard, probe_bind, tcp_reachable

PEER_TIMEOUT_S = 10.0


def check_dicom_receiver(config: NodeConfig) -> Iterator[Finding]:
    net = config.dicom_net
    if not net.enabled:
        yield Finding("dicom-in", "ok", "DICOM receiver off (dicom_net.enabled = false)")
        return
    where = f"{net.bind_address}:{net.port}"
    yield from port_findings("dicom-in", "dicom_net", net.bind_address, net.port, config)
    if is_wildcard(net.bind_address):
        yield Finding(
            "dicom-in",
            "warn",
            f"the receiver listens on every interface ({where})",
            "set dicom_net.bind_address to the LAN address the scanners and the PACS reach",
        )
    elif net.bind_address.startswith("127.") or net.bind_address == "::1":
        yield Finding(
            "dicom-in",
            "ok",
            f"listening on {where}: only this machine can push (the LAN address lets "
            "scanners push)",
        )
    if net.allow_any_caller:
        yield Finding(
            "dicom-in",
            "warn",
            "dicom_net.allow_any_caller = true: any device on the network may store images",
            "list the scanners' and the PACS's AE titles in dicom_net.allowed_callers and set "
            "allow_any_caller = false",
        )
    else:
        callers = ", ".join(net.allowed_callers)
        yield Finding("dicom-in", "ok", f"AE {net.ae_title}; allowed callers: {callers}")


def check_dicom_send(config: NodeConfig) -> Iterator[Finding]:
    send = config.dicom_send
    if not send.enabled or not send.host or not send.ae_title:
        yield Finding("dicom-out", "ok", "sending to a PACS not configured (dicom_send)")
        return
    host, port, called, calling = send.host, send.port, send.ae_title, send.calling_ae_title
    # The doctor waits less than the sender would: it reports, the sender retries.
    timeout = min(send.acse_timeout_s, PEER_TIMEOUT_S)
    where = f"{called} at {host}:{port}"
    why = tcp_reachable(host, port, timeout)
    if why is not None:
        yield Finding(
            "dicom-out",
            "warn",
            f"the PACS {where} cannot be reached ({why}): results wait in the send queue",
            "check dicom_send.host / port, the PACS and the firewall between them",
        )
        return
    why = c_echo(host, port, called, calling, timeout)
    if why is not None:
        yield Finding(
            "dicom-out",
            "warn",
            f"the PACS {where} is reachable but the C-ECHO from {calling} failed: {why}",
            f"register the node's AE title {calling} (this host, its address) on the PACS "
            "and check dicom_send.ae_title",
        )
        return
    yield Finding("dicom-out", "ok", f"the PACS {where} answers C-ECHO from {calling}")


def check_metrics(config: NodeConfig) -> Iterator[Finding]:
    metrics = config.metrics
    if not metrics.enabled:
        yield Finding("metrics", "ok", "metrics endpoint off (metrics.enabled = false)")
        return
    address, port = metrics.bind_address, metrics.port
    if port == 0:
        yield Finding("metrics", "ok", f"metrics on {address}, any free port (metrics.port = 0)")
    else:
        yield from port_findings("metrics", "metrics", address, port, config)
    if is_wildcard(address):
        yield Finding(
            "metrics",
            "warn",
            f"the metrics endpoint listens on every interface ({address}:{port})",
            "bind it to 127.0.0.1 (metrics.bind_address) and scrape it through a proxy or "
            "the monitoring agent on this host",
        )


def port_findings(
    check: str, key: str, address: str, port: int, config: NodeConfig
) -> Iterator[Finding]:
    state = probe_bind(address, port)
    where = f"{address}:{port}"
    if state.free:
        yield Finding(check, "ok", f"{where} is free for the node to listen on")
        return
    service, own = _own_pids(config)
    if state.error == "EADDRINUSE":
        if own and (set(state.holders) & own or not state.holders):
            # Not seeing the holder (another user's process) while our service runs: the
            # service listens there (it stops at start when it cannot).
            yield Finding(check, "ok", f"{where} is held by this node's service (pid {service})")
            return
        who = f"pid {', '.join(map(str, state.holders))}" if state.holders else "another program"
        yield Finding(
            check,
            "fail",
            f"{where} is in use by {who}: the node would refuse to start",
            f"stop that program (`ss -ltnp 'sport = :{port}'` shows it) or choose another "
            f"{key}.port",
        )
    elif state.error == "EACCES":
        yield Finding(
            check,
            "fail",
            f"port {port} below 1024 may not be bound by this user",
            f"use a port of 1024 or above ({key}.port), or give the service "
            "AmbientCapabilities=CAP_NET_BIND_SERVICE in its unit",
        )
    elif state.error in ("EADDRNOTAVAIL", "EAI"):
        yield Finding(
            check,
            "fail",
            f"{key}.bind_address {address!r} is not an address of this machine ({state.message})",
            f"set {key}.bind_address to one of this host's addresses (`ip -br addr`)",
        )
    else:
        yield Finding(
            check, "fail", f"{where} cannot be bound: {state.message}", f"check {key}.port"
        )


def _own_pids(config: NodeConfig) -> tuple[int | None, set[int]]:
    """This node's running service: its pid (status file fresh, pid alive; the lock
    file's pid alone is not enough: a killed service leaves it behind, and pids recycle)
    and the pids of it and every process below it. The service's pid is named as it is: a
    child's pid may be the lower one once pids wrap around."""
    from appliance.service_status import read_service_status

    status: dict[str, Any] | None = read_service_status(config)
    if status is None or not status.get("alive"):
        return None, set()
    pid = int(status["pid"])
    return pid, {pid, *descendants(pid)}  # its SuperNode child listens on the federation port
