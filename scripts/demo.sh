#!/usr/bin/env bash
# The one-command demo (README "Quick start"): sets up .venv on first use, then runs
# `liftplace demo` — MLflow, a local Ray, the API and web UI on 127.0.0.1, and a quick
# stability study on digits whose Table-6 grid is printed at the end. Ctrl-C stops it all.
# Extra arguments go to `liftplace demo` (see `bash scripts/demo.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
source scripts/venv.sh
exec "$VENV/bin/liftplace" demo "$@"
