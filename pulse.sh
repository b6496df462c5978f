#!/usr/bin/env bash
# The two set-up commands of the README:
#   ./pulse.sh demo   install everything, then run Pulse on this machine (pulse up)
#   ./pulse.sh test   install everything, then run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"

case "${1:-}" in
  demo)
    shift
    ./deploy/install.sh
    exec .venv/bin/pulse up "$@"
    ;;
  test)
    shift
    ./deploy/install.sh
    echo "==> lint (ruff), types (mypy --strict on protocol/), layers (lint-imports)"
    .venv/bin/ruff check .
    .venv/bin/mypy protocol
    .venv/bin/lint-imports
    echo "==> tests"
    exec .venv/bin/pytest "$@"
    ;;
  *)
    echo "usage: ./pulse.sh demo | test [pytest args]" >&2
    exit 2
    ;;
esac
