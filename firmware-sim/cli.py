"""`pulse sim run`: a simulated fleet against a gateway (MQTT) or the cloud's HTTP ingest."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from pulse.common import aio
from pulse.firmware_sim.device import Fault, FaultKind
from pulse.firmware_sim.runner import Fleet, HttpTarget, MqttTarget


def _secrets(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise SystemExit(f"pulse sim: {path} must be a JSON object of device id -> secret")
    return data


async def _run(args: argparse.Namespace) -> int:
    target: MqttTarget | HttpTarget
    if args.http:
        tokens = _secrets(args.tokens)
        target = HttpTarget(args.http, tokens)
    else:
        host, _, port = args.mqtt.rpartition(":")
        tls = ssl.create_default_context(cafile=args.tls_ca) if args.tls_ca else None
        target = MqttTarget(host or "127.0.0.1", int(port), _secrets(args.credentials), tls)
    fleet = Fleet.generate(args.devices, target, interval_s=args.interval, speed=args.speed, prefix=args.prefix)
    key = Path(args.firmware_key).read_bytes() if args.firmware_key else None  # noqa: ASYNC240 - once, at start
    for dev in fleet.devices.values():
        dev.firmware_version, dev.firmware_key = args.firmware_version, key
    for spec in args.fault:
        device, fault = Fault.parse(spec)
        fleet.inject(device, fault)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, fleet.stop)
    control: uvicorn.Server | None = None
    if args.control:
        from pulse.firmware_sim.control import control_app

        host, _, port = args.control.rpartition(":")
        control = uvicorn.Server(uvicorn.Config(control_app(fleet), host=host or "127.0.0.1", port=int(port), log_level="warning", lifespan="off"))
        serving = asyncio.create_task(control.serve())
        while not control.started and not serving.done():
            await asyncio.sleep(0.02)
        if serving.done():
            print(f"pulse sim: the control API could not listen on {args.control}", file=sys.stderr)
            return 1
        print(f"sim: control API on http://{host or '127.0.0.1'}:{port}/devices", file=sys.stderr, flush=True)
    runner = asyncio.create_task(fleet.run(args.duration))
    while not runner.done():
        await asyncio.wait({runner}, timeout=args.report_every)
        s = fleet.stats
        print(
            f"sim: {len(s.connected)}/{len(fleet.devices)} connected, {s.acknowledged} acknowledged, "
            f"{s.rejected} rejected, {s.connect_errors} link errors" + (f" (last: {s.last_error})" if s.last_error else ""),
            file=sys.stderr,
            flush=True,
        )
    if control is not None:
        control.should_exit = True
        await serving
    versions: dict[str, int] = {}
    for dev in fleet.devices.values():
        versions[dev.firmware_version] = versions.get(dev.firmware_version, 0) + 1
    print(json.dumps({**runner.result().to_json(), "firmware": versions}))
    return 0


def _cmd_fault(args: argparse.Namespace) -> int:
    """Inject a fault into a running `pulse sim run --control ...` (or clear faults)."""
    base = args.control.rstrip("/")
    base = base if base.startswith("http") else f"http://{base}"
    try:
        if args.kind == "clear":
            r = httpx.delete(f"{base}/devices/{args.device}/faults", timeout=10)
        else:
            body: dict[str, object] = {"kind": args.kind}
            for item in args.param:
                key, _, value = item.partition("=")
                body[key] = value if key == "metric" else float(value)
            r = httpx.post(f"{base}/devices/{args.device}/faults", json=body, timeout=10)
    except (httpx.HTTPError, ValueError) as exc:
        print(f"pulse sim fault: {exc}", file=sys.stderr)
        return 1
    if r.status_code >= 400:
        doc = r.json()
        print(f"pulse sim fault: {doc.get('code')}: {doc.get('message')}", file=sys.stderr)
        return 1
    print("cleared" if args.kind == "clear" else json.dumps(r.json()["faults"]))
    return 0


async def _equipment(args: argparse.Namespace) -> int:
    """Polled equipment on loopback: a power meter on Modbus TCP (and RTU), a UPS on SNMP."""
    from pulse.firmware_sim.equipment import MeterSim, UpsSim

    meter, ups = MeterSim(unit=args.unit), UpsSim(community=args.community)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    rtu: MeterSim | None = None
    try:
        await meter.start_tcp(args.modbus_port, args.host)
        ups.start(args.snmp_port, args.host)
        if args.rtu:
            rtu = MeterSim(unit=args.unit)
            await rtu.start_rtu(args.rtu)
        for spec in args.fault:
            which, _, kind = spec.partition(":")
            {"meter": meter, "ups": ups}[which].inject(kind)
        print(json.dumps({"modbus_tcp": f"{args.host}:{args.modbus_port}", "unit": args.unit, "snmp": f"{args.host}:{args.snmp_port}",
                          "community": args.community, "rtu": args.rtu}), flush=True)
        t0 = loop.time()
        while not stop.is_set():
            t = (loop.time() - t0) * args.speed
            for sim in (meter, ups, rtu):
                if sim is not None:
                    sim.tick(t)
            with contextlib.suppress(TimeoutError):
                await aio.wait_for(stop.wait(), 1.0)
            if args.duration is not None and loop.time() - t0 >= args.duration:
                break
    finally:
        for sim in (meter, ups, rtu):
            if sim is not None:
                await sim.stop()
    return 0


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("sim", help="run a simulated device fleet")
    cmds = p.add_subparsers(dest="sim_command", metavar="COMMAND", required=True)
    r = cmds.add_parser("run", help="run N simulated devices until Ctrl-C or --duration")
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--mqtt", metavar="HOST:PORT", help="a gateway's MQTT listener")
    where.add_argument("--http", metavar="URL", help="the cloud's base URL (direct devices, HTTP ingest)")
    r.add_argument("--credentials", metavar="FILE", help="JSON: device id -> MQTT secret (with --mqtt; device tokens for pulse cloud mqtt)")
    r.add_argument("--tls-ca", metavar="FILE", default=None,
                   help="with --mqtt: connect over TLS trusting this CA, e.g. the cloud's ca.crt for direct devices on pulse cloud mqtt")
    r.add_argument("--tokens", metavar="FILE", help="JSON: device id -> device token (with --http)")
    r.add_argument("--devices", type=int, default=25)
    r.add_argument("--prefix", default="dev", help="device ids are PREFIX-0000, PREFIX-0001, ...")
    r.add_argument("--interval", type=float, default=10.0, help="seconds between readings (the twin may change it)")
    r.add_argument("--speed", type=float, default=1.0, help="time acceleration: 60 plays a minute per second")
    r.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    r.add_argument("--report-every", type=float, default=5.0, help="seconds between progress lines")
    r.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="DEVICE:KIND[:k=v,...]",
        help="inject a fault: silent, spike, stuck, flapping, clock_skew, malformed, fw_corrupt, fw_interrupt, fw_install_fail,"
        " fw_never_back (e.g. dev-0003:spike:factor=5)",
    )
    r.add_argument("--firmware-version", default="1.0.0", help="the firmware version the devices start with")
    r.add_argument("--firmware-key", metavar="PEM", default=None,
                   help="the tenant's firmware public key: devices then install only firmware signed with it")
    r.add_argument(
        "--control",
        metavar="HOST:PORT",
        default=None,
        help="serve the control API here (inject and clear faults while running; see pulse sim fault)",
    )
    r.set_defaults(handler=lambda args: asyncio.run(_run(args)))
    f = cmds.add_parser("fault", help="inject a fault into a running fleet (pulse sim run --control), or clear its faults")
    f.add_argument("device", help="the device id, e.g. dev-0003")
    f.add_argument("kind", choices=[*(k.value for k in FaultKind), "clear"])
    f.add_argument("param", nargs="*", default=[], metavar="KEY=VALUE", help="metric=..., factor=5, threshold=30, offset_s=600, count=3, for_s=60")
    f.add_argument("--control", required=True, metavar="URL", help="the fleet's control API, as printed by pulse sim run or pulse up")
    f.set_defaults(handler=_cmd_fault)
    q = cmds.add_parser("equipment", help="polled equipment on loopback: a power meter (Modbus TCP, optionally RTU) and a UPS (SNMP)")
    q.add_argument("--host", default="127.0.0.1")
    q.add_argument("--modbus-port", type=int, default=5020, help="Modbus TCP port of the power meter (profile power-meter)")
    q.add_argument("--unit", type=int, default=1, help="the meter's Modbus unit id")
    q.add_argument("--snmp-port", type=int, default=1161, help="UDP port of the UPS's SNMP agent (profile ups-mib)")
    q.add_argument("--community", default="public")
    q.add_argument("--rtu", metavar="SERIAL_PORT", default=None, help="also serve the meter as Modbus RTU on this serial port")
    q.add_argument("--fault", action="append", default=[], metavar="meter|ups:KIND",
                   help="start with a fault: timeout, exception, wrong_type, ignore_writes (e.g. ups:timeout)")
    q.add_argument("--speed", type=float, default=1.0, help="time acceleration of the values' movement")
    q.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    q.set_defaults(handler=lambda args: asyncio.run(_equipment(args)))
