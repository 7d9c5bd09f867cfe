"""Where liftplace keeps files it makes: configured by environment variables.

LIFTPLACE_CACHE_DIR  cache of derived files (digits feature extractor weights, FID
                     reference statistics); default ~/.cache/liftplace.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]

CACHE_DIR_ENV = "LIFTPLACE_CACHE_DIR"


def cache_dir() -> Path:
    """The cache folder (created on first use)."""
    path = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "liftplace").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
