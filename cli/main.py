"""`pulse`: one command, a subcommand per job. Each tier registers its own subcommands here."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence

from pulse.common.version import __version__

Handler = Callable[[argparse.Namespace], int]

# Each tier adds its own command group: a module with `register(subparsers)`, by command name.
# A run of one command imports only its own module: `pulse gateway run` would otherwise load the
# cloud's and the simulator's libraries (pydantic, httpx, aiomqtt, cryptography: ~25 MB of a
# long-running gateway's memory) just to build this parser.
COMMAND_MODULES = {"gateway": "pulse.edge.cli", "cloud": "pulse.cloud.cli", "sim": "pulse.firmware_sim.cli"}

# name -> (module with `run() -> dict`, one-line description)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "codec": ("pulse.bench.codec", "sync batch codec: bytes per point and encode/decode speed against JSON envelopes"),
    "ingest": ("pulse.bench.ingest", "HTTP ingest (server in its own process) against a raw COPY of the same rows"),
    "alert": ("pulse.bench.alert", "threshold crossing -> alert committed, cloud (HTTP ingest) and edge (MQTT), p50/p99 against ingest/PUBACK"),
    "sync": ("pulse.bench.sync", "gateway buffer drained to the cloud over mTLS (--points, default 1M) against a raw COPY of the same rows"),
    "edge": ("pulse.bench.edge", "gateway intake (auth, parse, durable buffer) against a plain amqtt broker: msgs/s, ratio, RSS"),
    "connectors": ("pulse.bench.connectors", "polling 1,000 Modbus registers and 200 SNMP OIDs on simulated devices: points/s, CPU, RSS, jitter p99 against a one-request-per-point poller"),
    "link": ("pulse.bench.link", "uplink through a userspace link shaper (lte-m, nb-iot, capped, wide, flapping, idle): utilisation, stalls, recovery, bytes/day; --full"),
    "scale": ("pulse.bench.scale", "HTTP ingest with 1 and 2 `pulse cloud serve` replicas on one database, each against raw COPY: two_process_ratio, CPU per 100k messages"),
    "mqtt": ("pulse.bench.mqtt", "direct devices over `pulse cloud mqtt` (QoS 1, PUBACK after commit) against HTTP ingest of the same messages and a bare amqtt broker: msgs/s, ratio, p99 publish-to-commit"),
    "jobs": ("pulse.bench.jobs", "desired-state job to --devices (10,000) devices, direct and behind gateways, p50/p99 per device against one PATCH per device; firmware uplink bytes per device with and without the gateway cache"),
    "reports": ("pulse.bench.reports", "SLA report of 1,000 devices x 30 days against its bare SQL, archive export of --points (default 10M) to Parquet against a raw COPY (points/s, peak RSS), archive size per point against PostgreSQL's"),
    "notify": ("pulse.bench.notify", "threshold crossing -> webhook at a loopback receiver (p50/p99, deliveries/s) against bare POSTs to it"),
}


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"pulse {__version__}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    module, _ = BENCHMARKS[args.name]
    run = importlib.import_module(module).run
    figures = run(args.options) if args.options else run()
    print(json.dumps(figures))
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from pulse.cli.up import run

    return run(args)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` (one of ``COMMAND_MODULES``) only that tier's group is added."""
    parser = argparse.ArgumentParser(
        prog="pulse",
        description="Pulse: IoT fleet operations. An edge gateway that never loses data, and a cloud to run the fleet.",
    )
    parser.add_argument("--version", action="version", version=f"pulse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(handler=_cmd_version)

    p = sub.add_parser("up", help="run everything on this machine: database, cloud, a gateway, a simulated fleet")
    p.add_argument("--data-dir", default=None, help="where Pulse keeps its data (default: $PULSE_DATA_DIR or ./.pulse)")
    p.add_argument("--exit-after", type=float, default=None, metavar="SECONDS", help="stop by itself after this long")
    p.add_argument("--devices", type=int, default=25, help="simulated devices (default 25)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between a device's readings (default 10)")
    p.add_argument("--fault", action="append", default=[], metavar="DEVICE:KIND[:k=v,...]", help="inject a fault into a simulated device (see pulse sim run --help)")
    p.set_defaults(handler=_cmd_up)

    p = sub.add_parser(
        "bench",
        help="run a benchmark; prints one JSON object of figures",
        description="Benchmarks:\n" + "\n".join(f"  {k:<10} {d}" for k, (_, d) in BENCHMARKS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.add_argument("options", nargs=argparse.REMAINDER, help="options for that benchmark (e.g. edge --devices 200)")
    p.set_defaults(handler=_cmd_bench)

    modules = [COMMAND_MODULES[command]] if command in COMMAND_MODULES else COMMAND_MODULES.values()
    for module in modules:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_in[0] if args_in else None)
    args = parser.parse_args(args_in)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
