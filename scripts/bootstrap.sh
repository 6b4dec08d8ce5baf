#!/usr/bin/env bash
# Creates .venv and installs the pinned requirements and this package into it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# Reinstall only when requirements.txt or setup.py changed since the last install.
stamp=.venv/.postgraas-installed
digest=$(cat requirements.txt setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
  echo "$digest" > "$stamp"
fi
