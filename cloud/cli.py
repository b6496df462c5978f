"""`pulse cloud ...`: run and administer the cloud tier."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("cloud", help="run and administer the cloud")
    p.set_defaults(handler=lambda args: (p.print_help(), 0)[1])
    p.add_subparsers(dest="cloud_command", metavar="COMMAND")
