"""Files: sciqa's cache folder, atomic writes (temp file or folder renamed into place) and content digests."""
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("SCIQA_CACHE") or Path.home() / ".cache" / "sciqa")


def build_folder(target: Path, build: Callable[[Path], Path | None], marker: str = "") -> Path:
    """``target``, built once in a temp folder beside it (``build`` may return the part to use), renamed into place."""
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        made = build(staging) or staging
        try:
            made.rename(target)
        except OSError:
            if not (target / marker).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a temp file beside ``path``, fsync it, rename it over ``path``: readers see old or new, never half."""
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


@cache
def source_digest() -> str:
    """Digest of sciqa's own source: any edit, committed or not, changes every step's key."""
    return folder_digest(Path(__file__).parent, "*.py")


@cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's content, hashed once per process while its size and mtime stay."""
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def digest(*parts) -> str:
    """A short content digest of JSON-able parts (problem fields, target texts, file bytes' hashes)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def folder_digest(folder: Path, pattern: str = "*") -> str:
    """Digest of the relative name and bytes of every file matching ``pattern`` (adapter folders are small)."""
    files = sorted(p for p in Path(folder).rglob(pattern) if p.is_file())
    return digest(*[x for p in files for x in (str(p.relative_to(folder)), hashlib.sha256(p.read_bytes()).digest())])
