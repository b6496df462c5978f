# Sourced by install.sh and install-gateway.sh; needs log() and, when not root, SUDO=sudo.
#
# On a machine that has just booted, unattended-upgrades (or another installer) often holds apt's
# locks for a few minutes. apt-get install can wait for the dpkg lock (DPkg::Lock::Timeout) but
# apt-get update cannot wait for the lists lock, so both are retried while apt says it is locked.
apt_locked_retry() {
  local out waited=0
  while :; do
    if out=$(${SUDO:-} env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=60 "$@" 2>&1 >/dev/null); then
      return 0
    fi
    if ! grep -q "Could not get lock" <<<"$out" || [ "$waited" -ge 600 ]; then
      echo "$out" >&2
      return 1
    fi
    if [ "$waited" -eq 0 ]; then log "another program is using apt; waiting for it (up to 10 minutes)"; fi
    sleep 5
    waited=$((waited + 5))
  done
}
