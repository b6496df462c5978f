#!/usr/bin/env bash
# Installs everything Pulse needs on a Debian/Ubuntu machine, idempotently:
#   - system packages when missing: Python 3.11+ with venv, PostgreSQL server binaries, Node.js and
#     npm (to build the web console), Chromium (the console's browser tests), Mosquitto (the
#     reference broker of the MQTT conformance tests), nats-server (the optional stream's tests)
#   - a virtual environment in .venv/ at the repository root with Pulse (editable) and its test tools
#   - the web console built into cloud/console/dist (npm ci + vite build), served by the cloud at /app
# Safe to re-run: each step checks first and does nothing when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }
# shellcheck source=deploy/apt.sh
. deploy/apt.sh

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

apt_updated=""
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "Pulse needs these packages, and this machine has no apt-get: $*" >&2
    echo "Install them with your package manager, then run this again." >&2
    exit 1
  fi
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    apt_locked_retry update -qq
    apt_updated=1
  fi
  log "apt-get install $*"
  apt_locked_retry install -y -qq --no-install-recommends "$@"
}


# --- Python 3.11+ with venv -----------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1 || ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  apt_install python3 python3-venv python3-dev
fi
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "Pulse needs Python 3.11 or newer; $("$PYTHON" --version 2>&1) was found." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ] && ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
  apt_install python3-venv
fi

# --- PostgreSQL server binaries (initdb, pg_ctl) --------------------------------------------
have_pg() {
  [ -n "${PULSE_PG_BINDIR:-}" ] && [ -x "$PULSE_PG_BINDIR/initdb" ] && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && return 0
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1
}
if ! have_pg; then
  apt_install postgresql
fi
# As root, the embedded server runs under an unprivileged account.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  log "creating system account 'postgres' for the embedded database"
  useradd --system --home-dir /var/lib/postgresql --shell /usr/sbin/nologin postgres
fi

# --- Node.js and npm (console build), Chromium (console browser tests) -----------------------
node_ok() { command -v node >/dev/null 2>&1 && node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>18||(a===18&&b>=19)?0:1)'; }
if ! command -v node >/dev/null 2>&1; then
  apt_install nodejs
fi
if ! node_ok; then
  echo "Pulse's console needs Node.js 18.19 or newer; $(node --version 2>&1) was found." >&2
  exit 1
fi
if ! command -v npm >/dev/null 2>&1; then
  apt_install npm
fi
if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium
fi
# systemd-analyze checks the gateway's systemd unit in the tests
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt_install systemd
fi

# Mosquitto: the reference broker the MQTT conformance tests compare the gateway's broker with
if [ ! -x /usr/sbin/mosquitto ]; then
  apt_install mosquitto
fi
# nats-server: the optional JetStream between ingest and the telemetry writers (PULSE_STREAM_URL);
# its tests start their own server from this binary (Debian bookworm ships 2.9.x, JetStream included)
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  apt_install nats-server
fi
# socat: the Modbus RTU tests join the gateway and a simulated meter through a pseudo-terminal pair
if ! command -v socat >/dev/null 2>&1; then
  apt_install socat
fi

# --- virtual environment --------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.pulse-install-stamp
want="$(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x .venv/bin/pulse ]; then
  log "installing Pulse and its dependencies into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip > .venv/pip.log 2>&1 || true
  if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' > .venv/pip.log 2>&1; then
    grep -v "is ignored" .venv/pip.log >&2
    echo "installing Python packages failed (full log: .venv/pip.log)" >&2
    exit 1
  fi
  .venv/bin/pulse version >/dev/null
  echo "$want" > "$stamp"
fi
log "installed: $(.venv/bin/pulse version)"

# --- web console: npm ci when the lock file changed, vite build when the sources changed ------
console=cloud/console
npm_stamp=$console/node_modules/.pulse-npm-stamp
want="$(cat $console/package.json $console/package-lock.json | sha256sum | cut -d' ' -f1)"
if [ ! -f "$npm_stamp" ] || [ "$(cat "$npm_stamp")" != "$want" ]; then
  log "installing the console's npm packages (npm ci)"
  (cd $console && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$npm_stamp"
fi
build_stamp=$console/dist/.pulse-build-stamp
want="$(cd $console && find src index.html vite.config.ts tsconfig.json package-lock.json -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
if [ ! -f "$build_stamp" ] || [ "$(cat "$build_stamp")" != "$want" ] || [ ! -f $console/dist/index.html ]; then
  log "building the console (vite build)"
  (cd $console && npx --no-install vite build --logLevel warn)
  echo "$want" > "$build_stamp"
fi
