#!/usr/bin/env bash
# The whole test suite on a fresh machine: a Docker engine, the postgres test image, headless
# Chromium for the console's browser tests, the package, lint, type check, then pytest. Extra
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-docker.sh
scripts/build-test-images.sh
scripts/ensure-chromium.sh
scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# The package only (files in pyproject.toml's [tool.mypy]).
.venv/bin/mypy
exec .venv/bin/pytest "$@"
