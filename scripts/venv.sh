# Sourced by scripts/test.sh and scripts/demo.sh: create .venv with Python 3.11 on first use and
# install liftplace with its pinned dependencies; reinstall only when pyproject.toml changed.
# Sets VENV.
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=${LIFTPLACE_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.liftplace-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing liftplace and its pinned dependencies into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e ".[platform,dev]"
  touch "$stamp"
fi
