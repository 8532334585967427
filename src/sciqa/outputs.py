"""The outputs CSV: one per split x setting, append-only, resumable by problem id.

Rows are flushed and fsynced per batch so a crash loses at most the batch in flight. Opening the
file repairs it: every well-formed record is kept and only damaged ones are dropped (a torn last
record after ``kill -9``, a garbage line, a record with a wrong field count or undecodable bytes, a
repeated id), so one bad record never costs the records after it, which a re-run would otherwise
regenerate (and pay for twice with an API backend). ``_scan`` says how parsing resynchronises.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sciqa.errors import SciqaError

COLUMNS = ["id", "split", "setting", "model", "adapter", "prompt", "raw_output", "answer_index",
           "answer_text", "solution", "finish_reason", "n_output_tokens", "seconds"]

# How many lines a record found while resynchronising (after damage) may span; the bound grows to
# twice the longest record already read. Records here span ~10-100 lines (a prompt of a few
# paragraphs, an output of a few hundred tokens), so this rejects only a record far longer than
# its neighbours, and only the first one after damage; in exchange each dropped line costs at
# most this many lines of parsing, so a large damaged region is not quadratic. Records read in
# sequence from a good boundary are never bounded (a long one must not be regenerated forever).
RESYNC_LOOKAHEAD_LINES = 1000
# csv's default 128 KiB field limit would make a long model output look corrupt.
FIELD_SIZE_LIMIT = 2**31 - 1

_LINE_ENDS = ("\n", "\r")
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of non-UTF-8 bytes
_SPACE = re.compile(r"\s")


@dataclass
class _Scan:
    """What opening the file found: the header to keep, the records kept (id -> raw text)."""

    header: str
    records: dict[str, str] = field(default_factory=dict)
    dropped: int = 0
    torn_header: bool = False


def _serialise(fields: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(fields)
    return buf.getvalue()


def _without_line_end(text: str) -> str:
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith(_LINE_ENDS) else text


def _parse_at(lines: list[str], start: int, limit: int | None) -> tuple[list[str], int] | None:
    """The fields of the record starting at ``lines[start]`` and the index after it, if it parses.

    ``strict`` makes a quote that closes mid-field an error, so a run-away quoted field (an
    unbalanced quote swallowing the next records) fails where it meets the next record. A record
    without a line end after it may be cut short, so it does not parse either.
    """
    stop = len(lines) if limit is None else min(len(lines), start + limit)
    reader = csv.reader((lines[k] for k in range(start, stop)), strict=True)
    try:
        fields = next(reader)
    except (csv.Error, StopIteration):
        return None
    end = start + reader.line_num
    return (fields, end) if lines[end - 1].endswith(_LINE_ENDS) else None


def _well_formed(fields: list[str], ncols: int) -> bool:
    return len(fields) == ncols and fields[0] != ""


def _canonical(fields: list[str], raw: str) -> bool:
    """Whether ``raw`` is what ``csv.writer`` writes for ``fields`` (up to the line end)."""
    return _without_line_end(_serialise(fields)) == _without_line_end(raw)


def _plausible(lines: list[str], start: int, ncols: int, limit: int) -> tuple[list[str], int] | None:
    """A well-formed record at ``lines[start]`` that looks written by ``csv.writer``, if there is one.

    Ids are single tokens while a line inside a prompt or an output starts with prose, and our
    writer's output re-serialises to itself while text from inside a quoted field usually does
    not (its quotes are doubled).
    """
    parsed = _parse_at(lines, start, limit)
    if not parsed or not _well_formed(parsed[0], ncols) or _SPACE.search(parsed[0][0]):
        return None
    return parsed if _canonical(parsed[0], "".join(lines[start:parsed[1]])) else None


def _resync_at(lines: list[str], start: int, ncols: int, limit: int) -> tuple[list[str], int] | None:
    """A record to resynchronise on: plausible, and followed by another plausible one or the end.

    A line inside a field can look like a whole record (an output quoting CSV); what follows it
    is then the rest of that field, which is not a record. The price: a good record right before
    more damage is dropped with it.
    """
    found = _plausible(lines, start, ncols, limit)
    if found and (found[1] == len(lines) or _plausible(lines, found[1], ncols, limit)):
        return found
    return None


def _header(lines: list[str], columns: list[str], path: Path) -> tuple[str, bool]:
    """The header line to keep and whether it was torn; refuse a file that is not ours."""
    expected = _serialise(columns)
    if len(lines) == 1 and expected.startswith(lines[0]) and lines[0] != expected:
        return expected, True  # kill -9 while the first batch was being written
    try:
        fields = next(csv.reader(lines[:1]))
    except (csv.Error, StopIteration):
        fields = []
    if fields != columns or not lines[0].endswith(_LINE_ENDS):
        raise SciqaError(f"{path} is not a sciqa outputs CSV (its first line is not the expected header); "
                         "move it away or delete it")
    return lines[0], False


def _scan(text: str, columns: list[str], path: Path) -> _Scan:
    """Keep every well-formed record; drop damaged ones without losing the records after them.

    Records are read in sequence. Where one is not well-formed, its first line is dropped and a
    record is tried at each next line (bounded by RESYNC_LOOKAHEAD_LINES and checked by
    ``_resync_at``, as it may start inside a field of the damaged record) until one is; then
    reading goes on in sequence. A record read in sequence whose bounds are sound (it
    re-serialises to itself; only its field count is off) is dropped whole instead, so no record
    is ever found inside its fields. Each run of dropped lines counts as one dropped record (how
    many it held is unknowable), as does a repeated id (the first is kept) or a well-formed record
    with undecodable bytes.
    """
    # csv ends lines at \n, \r\n and \r only; str.splitlines would also split on \x1c, \x85, \u2028
    lines = io.StringIO(text, newline="").readlines()
    header, torn = _header(lines, columns, path)
    scan = _Scan(header, torn_header=torn)
    if torn:
        return scan
    i, resyncing, longest, ncols = 1, False, 1, len(columns)
    while i < len(lines):
        if resyncing:
            parsed = _resync_at(lines, i, ncols, max(RESYNC_LOOKAHEAD_LINES, 2 * longest))
        else:
            parsed = _parse_at(lines, i, None)
        fields, end = parsed or ([], i + 1)
        raw = "".join(lines[i:end])
        if not (parsed and _well_formed(fields, ncols)):
            sound = parsed is not None and not resyncing and _canonical(fields, raw)
            scan.dropped += not resyncing  # a run of dropped lines counts once
            resyncing, i = True, end if sound else i + 1
            continue
        if fields[0] in scan.records or _UNDECODABLE.search(raw):
            scan.dropped += 1  # its bounds are sound, so skip it whole
        else:
            scan.records[fields[0]] = raw
        resyncing, longest, i = False, max(longest, end - i), end
    return scan


@contextlib.contextmanager
def _no_field_size_limit() -> Iterator[None]:
    old = csv.field_size_limit(FIELD_SIZE_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _replace_atomically(path: Path, text: str) -> None:
    """Write a temp file beside ``path``, fsync it, rename it over ``path``: old or new, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class OutputsCSV:
    """Append rows for ids not yet present; ``done`` holds the ids already written.

    Opening repairs the file (see ``_scan``): ``dropped`` counts the records dropped and
    ``repaired`` says whether the file was rewritten. A non-empty file that does not start with
    the header raises ``SciqaError`` and is left untouched.
    """

    def __init__(self, path: Path, columns: list[str] = COLUMNS):
        self.path = Path(path)
        self.columns = columns
        self.done: set[str] = set()
        self.dropped = 0
        self.repaired = False
        if self.path.exists():
            self._repair_and_read()

    def _repair_and_read(self) -> None:
        # surrogateescape: invalid UTF-8 must not crash, and marks the records it damaged
        text = self.path.read_bytes().decode("utf-8", errors="surrogateescape")
        if not text:
            return
        with _no_field_size_limit():
            scan = _scan(text, self.columns, self.path)
        self.done = set(scan.records)
        self.dropped = scan.dropped
        if scan.dropped or scan.torn_header:
            _replace_atomically(self.path, scan.header + "".join(scan.records.values()))
            self.repaired = True

    def append(self, rows: Iterable[dict]) -> int:
        """Write rows whose id is new; flush to disk before returning (nothing computed is lost)."""
        new = [r for r in rows if str(r["id"]) not in self.done]
        if not new:
            return 0
        header = not self.path.exists() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if header:
                writer.writeheader()
            writer.writerows(new)
            f.flush()
            os.fsync(f.fileno())
        self.done.update(str(r["id"]) for r in new)
        return len(new)


def read_outputs(path: Path):
    """The CSV as a DataFrame with ids as strings and ``answer_index`` as nullable ints."""
    import pandas as pd

    df = pd.read_csv(path, dtype={"id": str}, keep_default_na=False, na_values={"answer_index": [""]})
    if "answer_index" in df:
        df["answer_index"] = pd.to_numeric(df["answer_index"], errors="coerce").astype("Int64")
    return df
