#!/usr/bin/env bash
# Installs a Pulse gateway on site hardware (Debian/Ubuntu/Raspberry Pi OS) as a systemd service.
#
#   sudo ./deploy/install-gateway.sh [--id NAME] [--cloud URL --token TOKEN]
#
# - creates the system account `pulse`, /etc/pulse/gateway.toml (kept if present) and
#   /var/lib/pulse-gateway (the buffer; give it disk space)
# - installs Pulse into /opt/pulse/.venv from this checkout
# - installs and starts the `pulse-gateway` systemd service (logs: journalctl -u pulse-gateway;
#   the journal is capped at 200 MB by deploy/journald-pulse-gateway.conf)
# - with --cloud and --token: enrolls the gateway with the cloud (the key pair is made here and
#   never leaves the box)
# Safe to re-run (an upgrade is the same command after `git pull`).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

id_name="$(hostname -s 2>/dev/null || echo gateway)"
cloud=""
token=""
while [ $# -gt 0 ]; do
  case "$1" in
    --id) id_name="$2"; shift 2 ;;
    --cloud) cloud="$2"; shift 2 ;;
    --token) token="$2"; shift 2 ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" -ne 0 ]; then echo "run as root (sudo)" >&2; exit 1; fi
log() { printf '==> %s\n' "$*"; }
# shellcheck source=deploy/apt.sh
. deploy/apt.sh

if ! python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  log "installing Python 3 with venv"
  apt_locked_retry update -qq
  apt_locked_retry install -y -qq --no-install-recommends python3 python3-venv
fi
if ! id pulse >/dev/null 2>&1; then
  log "creating system account pulse"
  useradd --system --home-dir /var/lib/pulse-gateway --shell /usr/sbin/nologin pulse
fi
install -d -o root -g pulse -m 0750 /etc/pulse
install -d -o pulse -g pulse -m 0750 /var/lib/pulse-gateway

log "installing Pulse into /opt/pulse/.venv"
install -d -m 0755 /opt/pulse
[ -x /opt/pulse/.venv/bin/python ] || python3 -m venv /opt/pulse/.venv
/opt/pulse/.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "$repo"

if [ ! -f /etc/pulse/gateway.toml ]; then
  log "writing /etc/pulse/gateway.toml"
  site_ip="$(hostname -I 2>/dev/null | awk '{print $1}')"
  site_ip="${site_ip:-127.0.0.1}"
  cat > /etc/pulse/gateway.toml <<TOML
# Pulse gateway configuration; every option: docs/configuration.md ("Gateway").
[gateway]
id = "$id_name"
data_dir = "/var/lib/pulse-gateway"

[broker]
port = 1883

[status]
host = "0.0.0.0"   # the installer's laptop on the site network can open http://<gateway>:8081/
port = 8081

[firmware]
# devices take firmware updates from this gateway (fetched once over the uplink); port = 0 turns it off
port = 8478
public_host = "$site_ip"   # this gateway's address on the site network, as devices reach it
TOML
  chown root:pulse /etc/pulse/gateway.toml
  chmod 0640 /etc/pulse/gateway.toml
fi

install -m 0644 "$repo/deploy/pulse-gateway.service" /etc/systemd/system/pulse-gateway.service
if [ ! -f /etc/systemd/journald.conf.d/pulse-gateway.conf ]; then
  log "capping the system journal at 200 MB (/etc/systemd/journald.conf.d/pulse-gateway.conf)"
  install -d -m 0755 /etc/systemd/journald.conf.d
  install -m 0644 "$repo/deploy/journald-pulse-gateway.conf" /etc/systemd/journald.conf.d/pulse-gateway.conf
  [ -d /run/systemd/system ] && systemctl restart systemd-journald || true
fi

if [ -n "$cloud" ] && [ -n "$token" ]; then
  log "enrolling with $cloud"
  runuser -u pulse -- env PULSE_GW_CONFIG=/etc/pulse/gateway.toml /opt/pulse/.venv/bin/pulse gateway enroll --cloud "$cloud" --token "$token"
fi

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now pulse-gateway
  systemctl restart pulse-gateway
  log "running: systemctl status pulse-gateway; status page on port 8081"
else
  log "systemd is not running here: start it with 'runuser -u pulse -- /opt/pulse/.venv/bin/pulse gateway run --config /etc/pulse/gateway.toml'"
fi
