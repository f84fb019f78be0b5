#!/usr/bin/env bash
# Installs what the test suite needs beyond pip packages, on Debian as root:
# redis-server (check-env --connect tests), Node.js (only if missing) and
# Next.js's env loader @next/env (the env-file round-trip tests).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# redis-server's package starts a system instance; the tests start their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet redis-server 2>/dev/null; then
  systemctl stop redis-server || true
fi
(cd "$here/node" && npm ci --no-audit --no-fund --silent)
echo "test dependencies ready: $(redis-server --version | cut -d' ' -f3), node $(node --version)"
