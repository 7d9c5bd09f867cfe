"""Print the pinned requirements of liftplace (core + the given extras), one per line, from pyproject.toml.

deploy/lock.sh resolves these (with their dependencies, to hashes) into deploy/requirements.lock,
which the Dockerfile installs. Every requirement must be pinned with ``==``; anything else is an error.

Two packages are also listed with an extra the image needs, at the same pinned version: Ray with
``default`` (without it, ``ray start --head`` runs no dashboard: the "minimal" install has no HTTP
server), MLflow with ``auth`` (Flask-WTF: the basic-auth app of the compose file's MLflow server).

Usage: python deploy/requirements.py [pyproject.toml] [extra ...]   (default extra: platform)
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)(?P<extras>\[[^\]]*\])?==(?P<version>[^\s;,]+)$")
IMAGE_EXTRAS = {"ray": "default", "mlflow": "auth"}  # distribution -> the extra the image adds


def pinned_requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"{pyproject}: no extra(s) {unknown}; known: {sorted(optional)}")
    reqs = list(project["dependencies"]) + [r for e in extras for r in optional[e]]
    loose = [r for r in reqs if not PIN.match(r.replace(" ", ""))]
    if loose:
        raise SystemExit(f"{pyproject}: not pinned with '==': {loose}")
    out = [r.replace(" ", "") for r in reqs]
    for r in list(out):
        m = PIN.match(r)
        assert m is not None
        extra = IMAGE_EXTRAS.get(m["name"].lower())
        if extra is not None and extra not in (m["extras"] or ""):
            out.append(f"{m['name']}[{extra}]=={m['version']}")
    return out


def main(argv: list[str]) -> int:
    pyproject = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "pyproject.toml"
    extras = argv[1:] or ["platform"]
    print("\n".join(pinned_requirements(pyproject, extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
