"""The outputs CSV: one per split x setting, append-only, resumable by problem id.

Rows are flushed and fsynced per batch so a crash loses at most the batch in flight; a torn
last record (``kill -9`` mid-write) is cut off when the file is opened again.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable

COLUMNS = ["id", "split", "setting", "model", "adapter", "prompt", "raw_output", "answer_index",
           "answer_text", "solution", "finish_reason", "n_output_tokens", "seconds"]


def _complete_prefix(text: str, ncols: int) -> int:
    """Length of the longest prefix of ``text`` made of whole records with ``ncols`` fields."""
    # Only \n, \r\n and \r end lines for csv; str.splitlines would also split on \x1c, \x85, \u2028...
    lines = io.StringIO(text, newline="").readlines()
    ends = [0]
    reader = csv.reader(iter(lines))
    try:
        for row in reader:
            if len(row) != ncols:
                break
            ends.append(reader.line_num)
    except csv.Error:
        pass
    good = ends[-1]
    if good and not lines[good - 1].endswith(("\n", "\r")):
        good = ends[-2] if len(ends) > 1 else 0  # last record lacks its newline: it may be cut short
    return sum(len(line) for line in lines[:good])


class OutputsCSV:
    """Append rows for ids not yet present; ``done`` holds the ids already written."""

    def __init__(self, path: Path, columns: list[str] = COLUMNS):
        self.path = Path(path)
        self.columns = columns
        self.done: set[str] = set()
        self.repaired = False
        if self.path.exists():
            self._repair_and_read()

    def _repair_and_read(self) -> None:
        with open(self.path, encoding="utf-8", newline="") as f:
            text = f.read()
        keep = _complete_prefix(text, len(self.columns))
        if keep != len(text):
            with open(self.path, "r+", encoding="utf-8", newline="") as f:
                f.truncate(len(text[:keep].encode("utf-8")))
            self.repaired = True
        rows = list(csv.DictReader(io.StringIO(text[:keep])))
        self.done = {r["id"] for r in rows}

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
