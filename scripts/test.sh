#!/usr/bin/env bash
# The whole test suite on a fresh machine: a Docker engine, the postgres test image, the
# package, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-docker.sh
scripts/build-test-images.sh
scripts/bootstrap.sh
exec .venv/bin/pytest "$@"
