"""The outputs CSV: one per split x setting, append-only, resumable by problem id.

Rows are flushed and fsynced per batch so a crash loses at most the batch in flight. Opening the
file repairs it: every well-formed record is kept and only damaged ones are dropped (a torn last
record after ``kill -9``, a garbage line, a record with a wrong field count or undecodable bytes, a
repeated id), so one bad record never costs the records after it, which a re-run would otherwise
regenerate (and pay for twice with an API backend). ``_scan`` says how parsing resynchronises.

A user's CSV (a teacher CSV, ``evaluate --csv``) is read by the same record-level reader
(:func:`read_user_csv`): a record cut mid-field is reported by line number and skipped, and the
records after it are kept, instead of their prompt lines being read as ids.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import stat
import sys
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


@dataclass(frozen=True)
class _Layout:
    """How records look: the field count, which field is the id, the delimiter."""

    ncols: int
    key: int = 0
    delimiter: str = ","


@dataclass
class _Scan:
    """What opening the file found: the header to keep, the records kept (id -> raw text)."""

    header: str
    records: dict[str, str] = field(default_factory=dict)
    dropped: int = 0
    torn_header: bool = False


def _serialise(fields: list[str], delimiter: str = ",") -> str:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter).writerow(fields)
    return buf.getvalue()


def _without_line_end(text: str) -> str:
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith(_LINE_ENDS) else text


def _parse_at(lines: list[str], start: int, limit: int | None, delimiter: str = ",") -> tuple[list[str], int] | None:
    """The fields of the record starting at ``lines[start]`` and the index after it, if it parses.

    ``strict`` makes a quote that closes mid-field an error, so a run-away quoted field (an
    unbalanced quote swallowing the next records) fails where it meets the next record. A record
    without a line end after it may be cut short, so it does not parse either.
    """
    stop = len(lines) if limit is None else min(len(lines), start + limit)
    reader = csv.reader((lines[k] for k in range(start, stop)), strict=True, delimiter=delimiter)
    try:
        fields = next(reader)
    except (csv.Error, StopIteration):
        return None
    end = start + reader.line_num
    return (fields, end) if lines[end - 1].endswith(_LINE_ENDS) else None


def _well_formed(fields: list[str], layout: _Layout) -> bool:
    return len(fields) == layout.ncols and fields[layout.key] != ""


def _canonical(fields: list[str], raw: str, delimiter: str = ",") -> bool:
    """Whether ``raw`` is what ``csv.writer`` writes for ``fields`` (up to the line end)."""
    return _without_line_end(_serialise(fields, delimiter)) == _without_line_end(raw)


def _plausible(lines: list[str], start: int, layout: _Layout, limit: int) -> tuple[list[str], int] | None:
    """A well-formed record at ``lines[start]`` that looks written by ``csv.writer``, if there is one.

    Ids are single tokens while a line inside a prompt or an output starts with prose, and our
    writer's output re-serialises to itself while text from inside a quoted field usually does
    not (its quotes are doubled).
    """
    parsed = _parse_at(lines, start, limit, layout.delimiter)
    if not parsed or not _well_formed(parsed[0], layout) or _SPACE.search(parsed[0][layout.key]):
        return None
    return parsed if _canonical(parsed[0], "".join(lines[start:parsed[1]]), layout.delimiter) else None


def _resync_at(lines: list[str], start: int, layout: _Layout, limit: int) -> tuple[list[str], int] | None:
    """A record to resynchronise on: plausible, and followed by another plausible one or the end.

    A line inside a field can look like a whole record (an output quoting CSV); what follows it
    is then the rest of that field, which is not a record. The price: a good record right before
    more damage is dropped with it.
    """
    found = _plausible(lines, start, layout, limit)
    if found and (found[1] == len(lines) or _plausible(lines, found[1], layout, limit)):
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
    lines = _lines(text)
    header, torn = _header(lines, columns, path)
    scan = _Scan(header, torn_header=torn)
    if torn:
        return scan
    for _, fields, raw in _records(lines, _Layout(len(columns))):
        if fields is None or fields[0] in scan.records or _UNDECODABLE.search(raw):
            scan.dropped += 1  # a run of damaged lines; a repeated id (its bounds are sound: skipped whole)
        else:
            scan.records[fields[0]] = raw
    return scan


def _lines(text: str) -> list[str]:
    # csv ends lines at \n, \r\n and \r only; str.splitlines would also split on \x1c, \x85, \u2028
    return io.StringIO(text, newline="").readlines()


def _records(lines: list[str], layout: _Layout) -> Iterator[tuple[int, list[str] | None, str]]:
    """The records after the header line, in order: ``(line index, fields, raw text)`` for each
    well-formed one, and ``(line index, None, text)`` where a run of damaged lines starts (see
    :func:`_scan` for how reading resynchronises after it)."""
    i, resyncing, longest = 1, False, 1
    while i < len(lines):
        if resyncing:
            parsed = _resync_at(lines, i, layout, max(RESYNC_LOOKAHEAD_LINES, 2 * longest))
        else:
            parsed = _parse_at(lines, i, None, layout.delimiter)
        fields, end = parsed or ([], i + 1)
        raw = "".join(lines[i:end])
        if not (parsed and _well_formed(fields, layout)):
            sound = parsed is not None and not resyncing and _canonical(fields, raw, layout.delimiter)
            if not resyncing:
                yield i, None, raw
            resyncing, i = True, end if sound else i + 1
            continue
        yield i, fields, raw
        resyncing, longest, i = False, max(longest, end - i), end


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


@dataclass
class UserCSV:
    """A user's CSV, read record by record: its columns, the well-formed rows (of an id given twice,
    the last), the line numbers where damaged records start, and how many rows repeated an id."""

    columns: list[str]
    rows: list[dict[str, str]]
    damaged_lines: list[int] = field(default_factory=list)
    duplicate_ids: int = 0

    def warn(self, where: str) -> None:
        """One warning line on stderr for what was skipped or overridden, if anything was."""
        said = []
        if self.damaged_lines:
            lines = ", ".join(map(str, self.damaged_lines[:5])) + (" ..." if len(self.damaged_lines) > 5 else "")
            said.append(f"{len(self.damaged_lines)} damaged record(s) skipped (line {lines})")
        if self.duplicate_ids:
            said.append(f"{self.duplicate_ids} duplicated id(s): the last row of each is used")
        if said:
            print(f"sciqa: warning: {where}: {'; '.join(said)}", file=sys.stderr, flush=True)


def read_user_csv(path: Path, what: str, keys: tuple[str, ...] = ("id",)) -> UserCSV:
    """A user's CSV (tab- or comma-separated, the id in the first of ``keys`` it has) with the outputs
    CSV's record-level reader: a damaged record is skipped without losing the records after it. One
    rule for repeated ids everywhere: the last row wins (a rerun appended to the file), counted."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")  # -sig: a spreadsheet's byte-order mark
    except UnicodeDecodeError:
        raise SciqaError(f"{what} '{path}' is not UTF-8 text") from None
    except OSError as exc:
        raise SciqaError(f"{what} '{path}' cannot be read ({exc.strerror})") from None
    lines = _lines(text)
    first = lines[0] if lines else ""
    delimiter = "\t" if first.count("\t") > first.count(",") else ","
    columns = [c.strip() for c in next(csv.reader([first], delimiter=delimiter), [])]
    key = next((columns.index(k) for k in keys if k in columns), 0)
    out, by_id = UserCSV(columns, []), {}
    if not columns:
        return out
    with _no_field_size_limit():
        for i, fields, _ in _records(lines, _Layout(len(columns), key, delimiter)):
            if fields is None:
                out.damaged_lines.append(i + 1)
                continue
            out.duplicate_ids += fields[key] in by_id
            by_id.pop(fields[key], None)
            by_id[fields[key]] = dict(zip(columns, fields))
    out.rows = list(by_id.values())
    return out
