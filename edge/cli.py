"""`pulse gateway ...`: run and manage a gateway on site hardware."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("gateway", help="run and manage a gateway (edge agent)")
    p.set_defaults(handler=lambda args: (p.print_help(), 0)[1])
    p.add_subparsers(dest="gateway_command", metavar="COMMAND")
