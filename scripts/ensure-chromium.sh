#!/usr/bin/env bash
# Make headless Chromium and its driver available for the console's browser tests
# (tests/integration/test_console.py): Debian's chromium and chromium-driver packages.
# Idempotent: exits at once when both are on PATH.
set -euo pipefail

say() { printf 'ensure-chromium: %s\n' "$*" >&2; }

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    say "chromium and chromedriver already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    say "chromium or chromedriver missing and not root: cannot install them"
    exit 1
fi

say "installing chromium and chromium-driver with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
say "installed $(chromium --version 2>/dev/null || echo chromium)"
