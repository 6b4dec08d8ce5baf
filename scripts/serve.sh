#!/usr/bin/env bash
# Serves the API with ./application.cfg (or $POSTGRAAS_CONFIG). Extra arguments go to `serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/postgraas-server serve "$@"
