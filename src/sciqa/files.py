"""Files: sciqa's cache folder, atomic writes (temp file or folder renamed into place) and content digests."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path


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


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a temp file beside ``path``, fsync it and rename it over ``path``: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tree_digest(root: Path) -> str:
    """Digest of the Python files under ``root``: names and bytes."""
    h = hashlib.sha256()
    for path in sorted(Path(root).rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


@lru_cache(maxsize=1)
def source_digest() -> str:
    """Digest of sciqa's own source: an edit (committed or not, in a checkout or an installed
    wheel) changes every step's key."""
    return tree_digest(Path(__file__).parent)


def digest(*parts) -> str:
    """A short content digest of JSON-able parts (problem fields, target texts, file bytes' hashes)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def folder_digest(folder: Path) -> str:
    """Digest of every file's relative name and bytes (adapter folders are small)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    return digest(*[x for p in files for x in (str(p.relative_to(folder)), hashlib.sha256(p.read_bytes()).digest())])
