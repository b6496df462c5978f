"""`pulse gateway ...`: run and manage a gateway on site hardware.

    pulse gateway run      [--config gateway.toml]
    pulse gateway enroll   --cloud URL --token T [--ca-file CA.pem] [--config gateway.toml]
    pulse gateway status   [--config gateway.toml] [--json]
    pulse gateway device add ID [--secret S] [--note TEXT]
    pulse gateway device list
    pulse gateway device remove ID
    pulse gateway device claim CODE --device-id ID [--name NAME]

``--config`` defaults to $PULSE_GW_CONFIG, else ./gateway.toml when it exists, else built-in
defaults (data in the current folder). See docs/gateway.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from pulse.protocol.errors import PulseError


def _config_path(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    if env := os.environ.get("PULSE_GW_CONFIG"):
        return Path(env)
    return Path("gateway.toml") if Path("gateway.toml").exists() else None


def _settings(args: argparse.Namespace) -> Any:
    from pulse.edge.config import load

    return load(_config_path(args.config), os.environ)


def _guard(fn: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except PulseError as exc:
            print(f"pulse gateway: {exc.code}: {exc.message}", file=sys.stderr)
            return 2

    return wrapped


@_guard
def _cmd_run(args: argparse.Namespace) -> int:
    from pulse.edge import app

    settings = _settings(args)
    app.configure_logging(settings.gateway.log_level)
    asyncio.run(app.run(settings))
    return 0


@_guard
def _cmd_enroll(args: argparse.Namespace) -> int:
    from pulse.edge.enroll import enroll

    settings = _settings(args)
    enrollment, cert = enroll(
        settings, args.cloud, args.token, ca_file=Path(args.ca_file) if args.ca_file else None, insecure=args.insecure
    )
    print(f"enrolled: this gateway is {enrollment.gateway_name!r} (id {enrollment.gateway_id}, tenant {enrollment.tenant_id})")
    print(f"certificate valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; renewed automatically")
    print(f"identity stored in {settings.state_dir} (the private key never leaves this gateway)")
    print(f"syncs with {enrollment.sync_url} once `pulse gateway run` is (re)started")
    return 0


@_guard
def _cmd_device_add(args: argparse.Namespace) -> int:
    from pulse.edge.auth import DeviceRegistry

    settings = _settings(args)
    registry = DeviceRegistry(settings.database)
    try:
        secret = registry.add(args.device_id, args.secret, note=args.note or "")
    finally:
        registry.close()
    if args.secret is None:
        print(f"device {args.device_id} added. Its secret (shown once, store it in the device now):")
        print(secret)
    else:
        print(f"device {args.device_id} added with the secret you gave.")
    print(f"The device connects with MQTT username and client id {args.device_id!r}.")
    return 0


@_guard
def _cmd_device_list(args: argparse.Namespace) -> int:
    from pulse.edge.auth import DeviceRegistry

    registry = DeviceRegistry(_settings(args).database)
    try:
        devices = registry.list()
    finally:
        registry.close()
    if args.json:
        print(json.dumps([{"device_id": d.device_id, "created_ms": d.created_ms, "note": d.note} for d in devices]))
        return 0
    if not devices:
        print("no devices yet: add one with `pulse gateway device add ID`")
    for d in devices:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(d.created_ms / 1000))
        print(f"{d.device_id:<40} added {created}  {d.note}")
    return 0


@_guard
def _cmd_device_claim(args: argparse.Namespace) -> int:
    """Claim a device in the cloud with an activation code, over this gateway's mutual-TLS sync API.
    The cloud sends the device's credential down to this gateway; the token is printed once."""
    import httpx

    from pulse.edge.errors import GatewayError
    from pulse.edge.identity import IdentityFiles
    from pulse.edge.link import client_context, load_enrollment, response_error, transport_error
    from pulse.protocol.activation import CLAIM_PATH
    from pulse.protocol.errors import Code

    settings = _settings(args)
    enrollment = load_enrollment(settings.state_dir)
    if enrollment is None:
        raise GatewayError(Code.GATEWAY_NOT_ENROLLED, "claiming needs the cloud: run `pulse gateway enroll --cloud URL --token T` first")
    url = enrollment.sync_url.rstrip("/") + CLAIM_PATH
    body = {"code": args.code, "device_id": args.device_id, "name": args.name or ""}
    try:
        with httpx.Client(verify=client_context(IdentityFiles(settings.state_dir)), timeout=30) as client:
            resp = client.post(url, json=body)
    except httpx.HTTPError as exc:
        raise transport_error(exc, url) from exc
    if resp.status_code != 201:
        raise response_error(resp, "claiming the device")
    claimed = resp.json()
    print(f"device {claimed['device_id']} claimed (id {claimed['id']}); it is served by this gateway.")
    print("Its token (shown once, store it in the device now):")
    print(claimed["token"])
    return 0


@_guard
def _cmd_device_remove(args: argparse.Namespace) -> int:
    from pulse.edge.auth import DeviceRegistry

    registry = DeviceRegistry(_settings(args).database)
    try:
        registry.remove(args.device_id)
    finally:
        registry.close()
    print(f"device {args.device_id} removed; it can no longer connect (a connected session ends when it disconnects).")
    return 0


@_guard
def _cmd_rules_set(args: argparse.Namespace) -> int:
    from pulse.edge.rules import store_rules

    try:
        docs = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as exc:
        print(f"pulse gateway: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    rules = store_rules(_settings(args).database, docs)
    print(f"{len(rules)} rules stored: {', '.join(f'{r.id} v{r.version}' for r in rules) or 'none'}.")
    print("A running gateway picks them up within its rule sweep (5 s).")
    return 0


def _offline(database: Path) -> dict[str, Any]:
    """What the SQLite file says when the gateway is not running."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    try:
        depth = dict(conn.execute("SELECT stream, COUNT(*) FROM records GROUP BY stream").fetchall())
        oldest = conn.execute("SELECT MIN(received_ms) FROM records").fetchone()[0]
        quarantined = conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        devices = conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0]
    finally:
        conn.close()
    return {"depth": sum(depth.values()), "oldest_ms": oldest, "quarantined": quarantined, "devices": devices}


@_guard
def _cmd_status(args: argparse.Namespace) -> int:
    import httpx

    settings = _settings(args)
    url = f"{settings.status_url}/status"
    try:
        doc = httpx.get(url, timeout=3).raise_for_status().json()
    except httpx.HTTPError as exc:
        print(f"gateway not answering on {url} ({exc.__class__.__name__}): is `pulse gateway run` running?")
        if settings.database.exists():
            off = _offline(settings.database)
            age = f"{time.time() - off['oldest_ms'] / 1000:.0f} s" if off["oldest_ms"] else "-"
            print(
                f"from {settings.database}: {off['depth']} buffered records (oldest {age}), "
                f"{off['quarantined']} quarantined, {off['devices']} devices registered"
            )
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    b, m, q = doc["buffer"], doc["messages"], doc["quarantine"]
    age = "-" if b["oldest_unsynced_age_s"] is None else f"{b['oldest_unsynced_age_s']:.0f} s"
    print(f"gateway      {doc['gateway']['id']} (pulse {doc['gateway']['version']}, up {doc['gateway']['uptime_s']:.0f} s)")
    print(f"devices      {doc['broker']['connected_devices']} connected on {', '.join(doc['broker']['listeners'])}")
    if x := doc.get("sessions"):
        print(f"sessions     {x['persistent']} persistent, {x['queued_now']} messages queued, {x['redelivered']} redelivered; "
              f"dropped {x['dropped_full']} (full), {x['dropped_age']} (too old), {x['expired']} (past deadline)")
    print(
        f"messages     {m['per_s']}/s; {m['stored']} stored, {m['duplicates']} duplicates, {m['quarantined']} invalid, "
        f"{m['denied']} refused"
    )
    print(
        f"buffer       {b['depth']} records, {b['bytes']} / {b['quota_bytes']} bytes, oldest unsynced {age}"
        f"{'  OVER QUOTA' if b['over_quota'] else ''}"
    )
    for st in b["streams"]:
        print(f"  {st['stream']:<10} {st['depth']:>9} records  acked to {st['acked_seq']:<9} dropped {st['dropped_count']}")
    print(f"quarantine   {q['count']} messages ({q['acl_denied']} refused by the topic ACL)")
    for r in reversed(q["last_reasons"][-5:]):
        print(f"  {r['code']:<32} {r['device_id']}: {r['message']}")
    u = doc["uplink"]
    print(f"uplink       {u['state']}")
    if "bytes_sent" in u:
        last_ok = "never" if u["last_success_ms"] is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(u["last_success_ms"] / 1000))
        print(f"  cloud      {u['sync_url']} as {u['gateway_id']} (tenant {u['tenant_id']})")
        print(f"  sent       {u['batches_acked']} batches acked, {u['records_acked']} records, {u['bytes_sent']} bytes; "
              f"last successful sync {last_ok}")
        if u["records_quarantined"]:
            print(f"  refused    {u['records_quarantined']} records refused by the cloud (in the quarantine)")
        if u["last_error"]:
            print(f"  last error {u['last_error_code']}: {u['last_error']}")
        if link := u.get("link"):
            from pulse.edge.pacing import link_line

            print(f"  link       {link_line(link)}")
        if u.get("stalled"):
            print(f"  STALLED    the backlog has not moved while the link is up; the watchdog restarted the uplink ({u['stalls']} times)")
        print(f"  cert until {u['certificate_expires']}")
        d = u.get("downlink") or {}
        print(f"  downlink   {d.get('state')}, cursor {d.get('cursor')}, {d.get('items_applied')} items applied")
    elif u["state"] == "not enrolled":
        print("  enroll with `pulse gateway enroll --cloud URL --token T`")
    for r in doc.get("connectors") or []:  # polled (Modbus/SNMP) devices
        took = "-" if r["duration_ms"] is None else f"{r['duration_ms']:g} ms"
        error = f"; last error {r['last_error']['code']}" if r["last_error"] else ""
        print(f"polled       {r['id']:<20} {r['state']:<8} {r['kind']} {r['line']}: poll took {took} of {r['interval_s']:g} s, "
              f"{r['polls']} polls ({r['failed_polls']} failed){error}")
    return 0


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("gateway", help="run and manage a gateway (edge agent)")
    p.set_defaults(handler=lambda args: (p.print_help(), 0)[1])
    gsub = p.add_subparsers(dest="gateway_command", metavar="COMMAND")

    def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--config", default=None, help="gateway TOML file (default: $PULSE_GW_CONFIG or ./gateway.toml)")
        return parser

    with_config(gsub.add_parser("run", help="run the gateway: MQTT broker, buffer, status page")).set_defaults(handler=_cmd_run)
    e = with_config(gsub.add_parser("enroll", help="connect this gateway to the cloud with a one-time token"))
    e.add_argument("--cloud", required=True, help="the cloud's URL, e.g. https://pulse.example.com")
    e.add_argument("--token", required=True, help="the one-time enrollment token from the cloud console")
    e.add_argument("--ca-file", default=None, help="trust this CA for the enrollment request (a self-hosted cloud with a private CA)")
    e.add_argument(
        "--insecure",
        action="store_true",
        help="allow an http:// cloud URL (the CA it answers with becomes the gateway's trust anchor: only on a network you trust)",
    )
    e.set_defaults(handler=_cmd_enroll)
    s = with_config(gsub.add_parser("status", help="what the running gateway is doing"))
    s.add_argument("--json", action="store_true", help="print the status document as JSON")
    s.set_defaults(handler=_cmd_status)

    d = gsub.add_parser("device", help="device credentials: add, list, remove")
    d.set_defaults(handler=lambda args: (d.print_help(), 0)[1])
    dsub = d.add_subparsers(dest="device_command", metavar="COMMAND")
    a = with_config(dsub.add_parser("add", help="add a device and print its secret"))
    a.add_argument("device_id")
    a.add_argument("--secret", default=None, help="use this secret instead of generating one (hashed with scrypt)")
    a.add_argument("--note", default=None, help="free text, e.g. where the device is")
    a.set_defaults(handler=_cmd_device_add)
    ls = with_config(dsub.add_parser("list", help="list devices"))
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_cmd_device_list)
    ru = gsub.add_parser("rules", help="the local rule set")
    ru.set_defaults(handler=lambda args: (ru.print_help(), 0)[1])
    rsub = ru.add_subparsers(dest="rules_command", metavar="COMMAND")
    rs = with_config(rsub.add_parser("set", help="replace the gateway's rules with those in a JSON file (a list of rules)"))
    rs.add_argument("--file", required=True, help="JSON file: a list of rules, as in docs/alerts.md")
    rs.set_defaults(handler=_cmd_rules_set)
    r = with_config(dsub.add_parser("remove", help="remove a device's credentials"))
    r.add_argument("device_id")
    r.set_defaults(handler=_cmd_device_remove)
    c = with_config(dsub.add_parser("claim", help="claim a device in the cloud with an activation code (prints its token once)"))
    c.add_argument("code", help="the activation code, e.g. K7XQ2-M9HTR (case, spaces and dashes do not matter)")
    c.add_argument("--device-id", required=True, help="the id the device will send as")
    c.add_argument("--name", default=None, help="a name for the device")
    c.set_defaults(handler=_cmd_device_claim)
