"""Mosquitto 2 configuration for a fleet (DESIGN §5): one mTLS listener and a topic ACL.

Every client presents a certificate from the fleet CA (``fleet_server.pki``); Mosquitto
takes its common name as the username (``use_identity_as_username``) and, with
``use_username_as_clientid``, as the client id too, so a device cannot pick another
device's client id to kick it off or take over its session.

The ACL (docs/trust.md has the table):

* the service identity (``jetfleet-server``) reads and writes ``jetfleet/v1/#``;
* a device ``%u`` writes only its own ``state``, ``telemetry``, ``events``, ``fetch``,
  ``upload`` (built TensorRT engines)
  and reads only its own ``desired``, ``cmd``, ``blocks``;
* every client reads ``a/+/blocks`` (broadcast blocks) and ``tuf/+`` (TUF metadata).

Mosquitto applies ``topic`` lines written before any ``user`` line to *anonymous*
clients only, so the all-device rules are ``pattern`` lines (which apply to every
client). Mosquitto denies every pattern rule to a client whose username or client id
contains ``+`` or ``#``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from fleet_server.pki import DEFAULT_SERVICE_IDENTITY, PkiError
from jetfleet.errors import TopicError
from jetfleet.fsutil import atomic_write
from jetfleet.topics import PREFIX, DeviceTopic, validate_device_id

CONF_FILE = "mosquitto.conf"
ACL_FILE = "acl"
MiB = 1024 * 1024
PACKET_OVERHEAD = 64 * 1024

DEVICE_WRITES = (DeviceTopic.STATE, DeviceTopic.TELEMETRY, DeviceTopic.EVENTS, DeviceTopic.FETCH,
                 DeviceTopic.UPLOAD)
DEVICE_READS = (DeviceTopic.DESIRED, DeviceTopic.CMD, DeviceTopic.BLOCKS)


class BrokerConfigError(PkiError):
    """A broker configuration value that would make a broken or unsafe config."""


@dataclass(frozen=True)
class BrokerConfigPaths:
    conf: Path
    acl: Path


def render_acl(server_identity: str = DEFAULT_SERVICE_IDENTITY) -> str:
    """The Mosquitto ACL file text."""
    _check_identity(server_identity)
    lines = [
        "# jetfleet broker ACL, written by fleet_server.brokerconf; do not edit by hand.",
        "# Usernames are certificate common names (use_identity_as_username).",
        "",
        "# The fleet server: everything under the protocol prefix.",
        f"user {server_identity}",
        f"topic readwrite {PREFIX}/#",
        "",
        "# Every device, on its own topics only (%u = its certificate CN = device id).",
    ]
    lines += [f"pattern write {PREFIX}/d/%u/{kind.value}" for kind in DEVICE_WRITES]
    lines += [f"pattern read {PREFIX}/d/%u/{kind.value}" for kind in DEVICE_READS]
    lines += [
        "",
        "# Every client: broadcast artifact blocks and TUF metadata, read only.",
        f"pattern read {PREFIX}/a/+/blocks",
        f"pattern read {PREFIX}/tuf/+",
        "",
    ]
    return "\n".join(lines)


def render_broker_config(
    *,
    port: int,
    ca: Path,
    server_cert: Path,
    server_key: Path,
    crl: Path,
    acl: Path,
    bind: str = "0.0.0.0",  # noqa: S104 - a fleet broker listens for devices on the network
    persistence_dir: Path | None = None,
    log_file: Path | None = None,
    run_as_user: str | None = None,
    max_queued_messages: int = 10000,
    max_queued_bytes: int = 256 * MiB,
    max_inflight_messages: int = 100,
    max_payload: int = 2 * MiB,
    username_as_clientid: bool = True,
) -> str:
    """The ``mosquitto.conf`` text (paths are written as given; pass absolute ones).

    Started as root, Mosquitto switches to ``run_as_user`` (its default: ``mosquitto``)
    *before* it reads the certificates, key, CRL, ACL and log file: that user must be able
    to read them. ``run_as_user="root"`` keeps root (tests only).
    """
    if run_as_user is not None and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", run_as_user):
        raise BrokerConfigError(f"run_as_user {run_as_user!r} is not a user name")
    if not 1 <= port <= 65535:
        raise BrokerConfigError(f"port {port} is not in 1-65535")
    try:
        ipaddress.ip_address(bind)
    except ValueError as exc:
        raise BrokerConfigError(f"bind address {bind!r} is not an IP address") from exc
    for what, number in (
        ("max_queued_messages", max_queued_messages),
        ("max_queued_bytes", max_queued_bytes),
        ("max_inflight_messages", max_inflight_messages),
        ("max_payload", max_payload),
    ):
        if number < 1:
            raise BrokerConfigError(f"{what} must be at least 1, got {number}")
    paths = {"cafile": ca, "certfile": server_cert, "keyfile": server_key, "crlfile": crl}
    paths["acl_file"] = acl
    if persistence_dir is not None:
        paths["persistence_location"] = persistence_dir
    if log_file is not None:
        paths["log_dest file"] = log_file
    text = {key: _path(key, value) for key, value in paths.items()}
    lines = [
        "# jetfleet Mosquitto 2 config, written by fleet_server.brokerconf; do not edit by hand.",
        "per_listener_settings false",
        *([f"user {run_as_user}"] if run_as_user else []),
        "allow_anonymous false",
        f"acl_file {text['acl_file']}",
        "set_tcp_nodelay true",
        f"max_queued_messages {max_queued_messages}",
        f"max_queued_bytes {max_queued_bytes}",
        f"max_inflight_messages {max_inflight_messages}",
        # a 1 MiB block frame plus its header fits; the rest is for topic and properties.
        # (2.0 recommends max_packet_size over the payload-only message_size_limit)
        f"max_packet_size {max_payload + PACKET_OVERHEAD}",
    ]
    if persistence_dir is None:
        lines.append("persistence false")
    else:
        # Mosquitto appends the file name to the location as is: keep the trailing slash.
        lines += ["persistence true", f"persistence_location {text['persistence_location']}/"]
    if log_file is not None:
        lines += [f"log_dest file {text['log_dest file']}"]
    lines += ["log_type error", "log_type warning", "log_type notice", "log_type information"]
    lines += [
        "",
        f"listener {port} {bind}",
        "protocol mqtt",
        "tls_version tlsv1.2",
        f"cafile {text['cafile']}",
        f"certfile {text['certfile']}",
        f"keyfile {text['keyfile']}",
        f"crlfile {text['crlfile']}",
        "require_certificate true",
        "use_identity_as_username true",
        f"use_username_as_clientid {'true' if username_as_clientid else 'false'}",
        "",
    ]
    return "\n".join(lines)


def write_broker_config(
    out_dir: Path,
    *,
    port: int,
    ca: Path,
    server_cert: Path,
    server_key: Path,
    crl: Path,
    server_identity: str = DEFAULT_SERVICE_IDENTITY,
    bind: str = "0.0.0.0",  # noqa: S104 - see render_broker_config
    persistence_dir: Path | None = None,
    log_file: Path | None = None,
    run_as_user: str | None = None,
    max_queued_messages: int = 10000,
    max_queued_bytes: int = 256 * MiB,
    max_inflight_messages: int = 100,
    max_payload: int = 2 * MiB,
    username_as_clientid: bool = True,
) -> BrokerConfigPaths:
    """Write ``mosquitto.conf`` and ``acl`` into ``out_dir``; run ``mosquitto -c`` on the
    first. Relative paths are made absolute (Mosquitto resolves them from its cwd)."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    result = BrokerConfigPaths(conf=out / CONF_FILE, acl=out / ACL_FILE)
    acl_text = render_acl(server_identity)
    conf_text = render_broker_config(
        port=port,
        ca=Path(ca).resolve(),
        server_cert=Path(server_cert).resolve(),
        server_key=Path(server_key).resolve(),
        crl=Path(crl).resolve(),
        acl=result.acl,
        bind=bind,
        persistence_dir=Path(persistence_dir).resolve() if persistence_dir else None,
        log_file=Path(log_file).resolve() if log_file else None,
        run_as_user=run_as_user,
        max_queued_messages=max_queued_messages,
        max_queued_bytes=max_queued_bytes,
        max_inflight_messages=max_inflight_messages,
        max_payload=max_payload,
        username_as_clientid=username_as_clientid,
    )
    atomic_write(result.acl, acl_text.encode(), mode=0o644)
    atomic_write(result.conf, conf_text.encode(), mode=0o644)
    return result


def _check_identity(name: str) -> None:
    try:
        validate_device_id(name)
    except TopicError as exc:
        raise BrokerConfigError(f"invalid server identity: {exc}") from exc


def _path(key: str, value: Path) -> str:
    """A path as Mosquitto's parser reads it: the rest of the line, so no line breaks,
    and no leading or trailing blanks (they would be silently stripped)."""
    text = str(value)
    if not text or text != text.strip() or any(ord(c) < 32 or c == "\x7f" for c in text):
        raise BrokerConfigError(f"{key} path {text!r} cannot be written in mosquitto.conf")
    return text
