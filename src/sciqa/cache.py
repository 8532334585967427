"""sciqa's own cache folder (tiny models, WordNet for nltk, run locks): ``$SCIQA_CACHE`` or ~/.cache/sciqa."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def cache_root() -> Path:
    return Path(os.environ.get("SCIQA_CACHE") or Path.home() / ".cache" / "sciqa")


def build_folder(target: Path, build: Callable[[Path], None], marker: str) -> Path:
    """``target``, built once: ``build(staging)`` fills a temp folder beside it, which is renamed into
    place, so a crash never leaves a partial folder where ``target/marker`` says a complete one is.
    Concurrent builders race to the rename; the winner's copy is kept, and any other failure raises."""
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
