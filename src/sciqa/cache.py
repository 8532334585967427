"""sciqa's own cache folder (tiny models, WordNet for nltk, run locks): ``$SCIQA_CACHE`` or ~/.cache/sciqa."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("SCIQA_CACHE") or Path.home() / ".cache" / "sciqa")
