"""Where softnpu caches what is costly to make again, in one place.

`$SOFTNPU_CACHE` (default `~/.cache/softnpu`) holds one folder per kind: `tflite/` (zoo networks
converted to int8 TFLite), `rtl/` (Verilator builds, one per hash of config and sources) and
`bundles/` (the demo's compiled bundles).  Every entry is keyed by a hash of what produced it, so
deleting the folder is always safe.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["KINDS", "cache_dir"]

KINDS = ("tflite", "rtl", "bundles")


def cache_dir(kind: str) -> Path:
    """The cache folder for `kind` (one of KINDS); not created here."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; expected one of {KINDS}")
    root = os.environ.get("SOFTNPU_CACHE") or "~/.cache/softnpu"
    return Path(root).expanduser() / kind
