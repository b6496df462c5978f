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
    # The whole suite ends within CI's 30 minutes whatever a test does: at the limit SIGUSR1
    # makes pytest dump every thread's stack (tests/leakcheck.py) and end; KILL a minute later.
    limit="${PULSE_TEST_TIME_LIMIT:-27m}"
    echo "==> tests (time limit $limit)"
    status=0
    timeout --signal=USR1 --kill-after=60s "$limit" .venv/bin/pytest "$@" || status=$?
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
      echo "==> the test suite did not finish within $limit and was stopped (thread stacks above); failing" >&2
    fi
    exit "$status"
    ;;
  *)
    echo "usage: ./pulse.sh demo | test [pytest args]" >&2
    exit 2
    ;;
esac
