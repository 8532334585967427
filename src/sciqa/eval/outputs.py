"""The outputs CSV (append-only, resumable by id) and users' CSVs, read record by record: a damaged record (torn by
``kill -9``, garbage, a wrong field count, bad bytes) is dropped without losing the records after it."""
import csv
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from sciqa.errors import SciqaError
from sciqa.files import write_atomic

COLUMNS = ["id", "split", "setting", "model", "adapter", "prompt", "raw_output", "answer_index",
           "answer_text", "solution", "finish_reason", "n_output_tokens", "seconds"]

_FIELD = {d: re.compile(rf'"([^"]*(?:""[^"]*)*)"|([^{d}"\r\n][^{d}\r\n]*)?') for d in ",\t"}  # quoted or bare
_EOL = re.compile(r"\r\n?|\n")
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of non-UTF-8 bytes


def _record_at(text: str, pos: int, ncols: int, key: int, delimiter: str, resync: bool) -> tuple[list, int] | None:
    """Fields and end of a well-formed record at ``pos``; after damage (``resync``) only one our writer could write."""
    fields: list[str] = []
    for i in range(ncols):  # ncols fields at most: a run-away field costs one record's worth of text
        if i and not text.startswith(delimiter, pos):
            return None
        m = _FIELD[delimiter].match(text, pos + (i > 0))
        if resync and m[1] is None and '"' in (m[2] or ""):
            return None  # our writer quotes such a field: this is text from inside one
        fields.append((m[2] or "") if m[1] is None else m[1].replace('""', '"'))
        pos = m.end()
    end = _EOL.match(text, pos)
    return (fields, end.end()) if end and fields[key] and not (resync and re.search(r"\s", fields[key])) else None


def _records(text: str, pos: int, ncols: int, key: int = 0, delimiter: str = ",") -> Iterator[tuple]:
    """``(position, fields, raw text)`` of each well-formed record, ``(position, None, "")`` where damage starts. After
    damage a record must be followed by another (or the end): a line inside a field may look like one, not its next."""
    synced = True
    while pos < len(text):
        found = _record_at(text, pos, ncols, key, delimiter, not synced)
        if found and not synced and found[1] < len(text):
            found = found if _record_at(text, found[1], ncols, key, delimiter, True) else None
        if found:
            yield pos, found[0], text[pos:found[1]]
            pos, synced = found[1], True
            continue
        if synced:
            yield pos, None, ""
        synced, eol = False, _EOL.search(text, pos)
        pos = eol.end() if eol else len(text)


class OutputsCSV:
    """Append rows for ids not in ``done``. Opening repairs the file: ``dropped`` counts the damaged records
    dropped (the first of a repeated id is kept), ``repaired`` says it was rewritten; a foreign file is refused."""

    def __init__(self, path: Path, columns: list[str] = COLUMNS):
        self.path, self.columns = Path(path), columns
        self.done: set[str] = set()
        self.dropped, self.repaired = 0, False
        if not self.path.exists():
            return
        text = self.path.read_bytes().decode("utf-8", errors="surrogateescape")  # bad bytes mark their records
        header = ",".join(self.columns) + "\r\n"
        torn = text not in ("", header) and header.startswith(text)  # killed while the header was written
        text = header if header.startswith(text) else text
        head = _record_at(text, 0, len(self.columns), 0, ",", False)
        if head is None or head[0] != self.columns:
            raise SciqaError(f"{self.path} is not a sciqa outputs CSV (its first line is not the expected header); "
                             "move it away or delete it")
        kept: dict[str, str] = {}
        for _, fields, raw in _records(text, head[1], len(self.columns)):
            if fields is None or fields[0] in kept or _UNDECODABLE.search(raw):
                self.dropped += 1
            else:
                kept[fields[0]] = raw
        self.done = set(kept)
        self.repaired = bool(self.dropped) or torn
        if self.repaired:
            write_atomic(self.path, text[: head[1]] + "".join(kept.values()))

    def append(self, rows: Iterable[dict]) -> int:
        """Write rows whose id is new; flush to disk before returning (nothing computed is lost)."""
        new = [r for r in rows if str(r["id"]) not in self.done]
        if not new:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if f.tell() == 0:
                writer.writeheader()
            writer.writerows(new)
            f.flush()
            os.fsync(f.fileno())
        self.done.update(str(r["id"]) for r in new)
        return len(new)


def read_outputs(path: Path) -> pd.DataFrame:
    """The outputs CSV as a DataFrame with ids as strings and ``answer_index`` as nullable ints."""
    df = pd.read_csv(path, dtype={"id": str}, keep_default_na=False, na_values={"answer_index": [""]})
    if "answer_index" in df:
        df["answer_index"] = pd.to_numeric(df["answer_index"], errors="coerce").astype("Int64")
    return df


def parse_answer_index(cell: object, n_choices: int, base: int = 0) -> int | None:
    """An ``answer_index`` cell as a 0-based choice; None when empty, not a whole number or out of range."""
    try:
        number = float(str(cell).strip()) - base
    except ValueError:
        return None
    return int(number) if number.is_integer() and 0 <= number < n_choices else None


class UserCSV(NamedTuple):
    """A user's CSV: its columns, the well-formed rows (of a repeated id, the last), where damaged records start."""

    columns: list[str]
    rows: list[dict[str, str]]
    damaged_lines: list[int]
    duplicate_ids: int

    def warn(self, where: str) -> None:
        """One warning line on stderr for what was skipped or overridden, if anything was."""
        n, lines = len(self.damaged_lines), ", ".join(map(str, self.damaged_lines[:5]))
        said = [f"{n} damaged record(s) skipped (line {lines}{' ...' if n > 5 else ''})"] if n else []
        said += [f"{self.duplicate_ids} duplicated id(s): the last row of each is used"] if self.duplicate_ids else []
        if said:
            print(f"sciqa: warning: {where}: {'; '.join(said)}", file=sys.stderr, flush=True)


def read_user_csv(path: Path, what: str, keys: tuple[str, ...] = ("id",), required: Iterable[str] = ()) -> UserCSV:
    """A tab- or comma-separated CSV by record, id in the first of ``keys`` it has; a repeated id: its last row wins."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # -sig: a spreadsheet's byte-order mark
    except UnicodeDecodeError:
        raise SciqaError(f"{what} '{path}' is not UTF-8 text") from None
    except OSError as exc:
        raise SciqaError(f"{what} '{path}' cannot be read ({exc.strerror})") from None
    eol = _EOL.search(text)
    first = text[: eol.end() if eol else len(text)]
    delimiter = "\t" if first.count("\t") > first.count(",") else ","
    columns = [c.strip() for c in next(csv.reader([first], delimiter=delimiter), [])]
    if missing := [c for c in required if c not in columns]:
        raise SciqaError(f"{what} '{path.name}' lacks column(s) {', '.join(missing)}; it has: {', '.join(columns)}")
    key, by_id, damaged, duplicates = next((columns.index(k) for k in keys if k in columns), 0), {}, [], 0
    for pos, fields, _ in _records(text, len(first), len(columns), key, delimiter) if columns else ():
        if fields is None:
            damaged.append(len(_EOL.findall(text, 0, pos)) + 1)
            continue
        duplicates += fields[key] in by_id
        by_id.pop(fields[key], None)
        by_id[fields[key]] = dict(zip(columns, fields))
    return UserCSV(columns, list(by_id.values()), damaged, duplicates)


def read_frame(path: Path) -> pd.DataFrame:
    """A user's CSV with ``id`` and ``raw_output`` as strings; ``attrs["duplicate_ids"]`` counts repeated ids merged."""
    table = read_user_csv(path, "CSV", required=("id", "raw_output"))
    if not table.rows:
        raise SciqaError(f"CSV '{path.name}' has no rows to evaluate")
    table.warn(f"CSV '{path.name}'")
    df = pd.DataFrame(table.rows, columns=table.columns)
    df.attrs["duplicate_ids"] = table.duplicate_ids
    return df
