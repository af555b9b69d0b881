#!/usr/bin/env bash
# Install headless Chromium (used by tests/test_dashboard_render.py) when it is missing.
# Debian/Ubuntu, as root or with sudo; quiet unless something fails.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
