#!/usr/bin/env bash
# Installs what the test suite needs beyond pip packages, on Debian as root:
# redis-server (check-env --connect tests), Node.js (only if missing), Next.js's
# env loader @next/env and @dotenvx/dotenvx (env-file round trips and encrypted
# files), promtool (the alert rules), debootstrap and systemd-nspawn (the deploy
# tests boot real systemd hosts), shellcheck (the deploy's host script), chromium
# (the dashboard's browser tests drive it with Playwright; Playwright's own browser
# download is not used).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v promtool >/dev/null || need+=(prometheus)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# redis-server's and prometheus's packages may start system instances; the tests start their own.
for unit in redis-server prometheus; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$unit" 2>/dev/null; then
    systemctl stop "$unit" || true
  fi
done
(cd "$here/node" && npm ci --no-audit --no-fund --silent)
echo "test dependencies ready: $(redis-server --version | cut -d' ' -f3), node $(node --version)"
