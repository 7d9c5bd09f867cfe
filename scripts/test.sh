#!/usr/bin/env bash
# The project's one test command (README "Quick start"; .ci/run runs exactly this).
# On first use it creates .venv with Python 3.11 and installs the package with its pinned
# dependencies; afterwards it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=${LIFTPLACE_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.liftplace-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing liftplace and its pinned dependencies into $VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e ".[platform,dev]"
  touch "$stamp"
fi

echo "==> ruff"
"$VENV/bin/ruff" check .
echo "==> pytest"
# Tests write their cache (digits features, FID statistics) into a throw-away folder.
export LIFTPLACE_CACHE_DIR=${LIFTPLACE_CACHE_DIR:-$(mktemp -d)}
# The data layer is tested on SQLite and on PostgreSQL (127.0.0.1:5432, database "test"):
# "require" fails, rather than skips, when PostgreSQL does not answer.
export LIFTPLACE_TEST_POSTGRES=${LIFTPLACE_TEST_POSTGRES:-require}
exec "$VENV/bin/python" -m pytest "$@"
