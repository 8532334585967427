"""The outputs CSV: append-only, resume by id; opening keeps every well-formed record."""
import csv
import io

import pytest

from sciqa.errors import SciqaError
from sciqa.eval.outputs import COLUMNS, OutputsCSV, read_outputs


def _row(i, text="answer"):
    return {c: "" for c in COLUMNS} | {"id": str(i), "raw_output": text, "answer_index": i % 2}


def test_append_resume_and_no_duplicates(tmp_path):
    path = tmp_path / "o.csv"
    out = OutputsCSV(path)
    assert out.append([_row(1), _row(2, 'multi\nline, "quoted"')]) == 2
    assert out.append([_row(2), _row(3)]) == 1
    again = OutputsCSV(path)
    assert again.done == {"1", "2", "3"} and not again.repaired
    df = read_outputs(path)
    assert list(df["id"]) == ["1", "2", "3"]
    assert df.loc[1, "raw_output"] == 'multi\nline, "quoted"'
    assert path.read_text().count("id,split") == 1


def test_torn_last_record_is_cut(tmp_path):
    path = tmp_path / "o.csv"
    OutputsCSV(path).append([_row(1), _row(2)])
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'3,validation,QTCH,m,,"prompt with\nnewline","half a')  # kill -9 mid-write
    out = OutputsCSV(path)
    assert out.repaired and out.done == {"1", "2"}
    assert path.read_bytes() == whole
    out.append([_row(3)])
    assert list(read_outputs(path)["id"]) == ["1", "2", "3"]


def test_record_without_final_newline_is_redone(tmp_path):
    path = tmp_path / "o.csv"
    OutputsCSV(path).append([_row(1)])
    path.write_bytes(path.read_bytes() + b"2" + b",x" * (len(COLUMNS) - 1))  # complete fields, no newline
    assert OutputsCSV(path).done == {"1"}


def test_control_characters_in_outputs_survive_reopen(tmp_path):
    """csv does not quote \\x1c or \\u2028; they must not be taken for line ends on repair."""
    path = tmp_path / "o.csv"
    OutputsCSV(path).append([_row(1, "noise \x1c more \x85 and \u2028 end"), _row(2)])
    again = OutputsCSV(path)
    assert again.done == {"1", "2"} and not again.repaired
    assert read_outputs(path).loc[0, "raw_output"] == "noise \x1c more \x85 and \u2028 end"


# --- repair: keep every well-formed record, drop only the damaged ones --------------------------

N = 20
HEADER = ",".join(COLUMNS).encode() + b"\r\n"
# a line of a record's output that is itself a whole record: it must never be taken for one
FAKE = "99,validation,QTCH,m,,p,o,1,A,s,stop,3,0.1"


def _rich_row(i):
    """A realistic row: multi-line prompt with quotes, commas and unicode; a multi-line output."""
    prompt = (f'Question: Which is hotter, "a cup of tea" or "an ice cube"? (#{i})\n'
              "Task: closed choice\n"
              f"Choices: (A) {i} °C ≥ 3, (B) 100 °C, (C) neither\n"
              "Hint: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13\n"  # 13 fields on one line
              "Lecture: heat flows\u2028from hot to cold, \x1c always.\n"
              'Answer with JSON: {"answer": "(A)", "solution": "..."}')
    raw = f'{{"answer": "(B)", "solution": "Tea is hot,\nice is ≥ cold; \ufffd ok."}}\n{FAKE}\r\nend'
    return {"id": str(i), "split": "validation", "setting": "QTCH", "model": "org/model-7b", "adapter": "",
            "prompt": prompt, "raw_output": raw, "answer_index": i % 3, "answer_text": "(B)",
            "solution": "Tea is hot,\nice is cold.", "finish_reason": "stop", "n_output_tokens": 40 + i,
            "seconds": 0.125}


def _record(i):
    """The bytes OutputsCSV writes for row ``i``."""
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=COLUMNS).writerow(_rich_row(i))
    return buf.getvalue().encode()


@pytest.fixture
def records(tmp_path):
    """Record bytes by id (1..N); checks they are exactly what OutputsCSV.append writes."""
    path = tmp_path / "clean.csv"
    OutputsCSV(path).append([_rich_row(i) for i in range(1, N + 1)])
    recs = {i: _record(i) for i in range(1, N + 1)}
    assert path.read_bytes() == HEADER + b"".join(recs.values())
    return recs


def _open(tmp_path, parts):
    path = tmp_path / "o.csv"
    path.write_bytes(HEADER + b"".join(parts))
    return path, OutputsCSV(path)


def _ids(path):
    return list(read_outputs(path)["id"])


def _without(*ids):
    return [str(i) for i in range(1, N + 1) if i not in ids]


def test_clean_file_is_left_alone(tmp_path, records):
    path, out = _open(tmp_path, records.values())
    before = path.read_bytes()
    assert out.done == set(_without()) and out.dropped == 0 and not out.repaired
    assert path.read_bytes() == before
    assert "99" not in out.done  # the record-like line inside an output is not a record


def test_garbage_line_between_records(tmp_path, records):
    parts = list(records.values())
    parts.insert(5, b'\x00\x00\xff\xfe\x00garbage, "x\x00\r\n')  # between records 5 and 6
    path, out = _open(tmp_path, parts)
    assert out.dropped == 1 and out.repaired
    assert _ids(path) == _without()
    assert path.read_bytes() == HEADER + b"".join(records.values())


@pytest.mark.parametrize("cut, lost", [
    (b"Task: closed choice\n", (7,)),  # cut after a newline in the prompt: record 8 starts a line
    (b"(B) 100 ", (7, 8)),  # cut mid-line: record 8 is glued to the torn one and goes with it
    (b"Tea is hot,\n", (7,)),  # cut in raw_output after a newline of it
])
def test_record_truncated_mid_field_keeps_the_following_records(tmp_path, records, cut, lost):
    parts = list(records.values())
    parts[6] = parts[6][: parts[6].index(cut) + len(cut)]  # an unbalanced quote, then record 8
    path, out = _open(tmp_path, parts)
    assert out.dropped == 1 and out.repaired
    assert _ids(path) == _without(*lost)
    assert out.done == set(_without(*lost))


@pytest.mark.parametrize("damage", [
    lambda rec: rec[:-2] + b",extra\r\n",  # a field too many
    lambda rec: rec[: rec.rindex(b",")] + b"\r\n",  # a field too few
])
def test_record_with_wrong_field_count(tmp_path, records, damage):
    parts = list(records.values())
    parts[8] = damage(parts[8])  # record 9
    path, out = _open(tmp_path, parts)
    assert out.dropped == 1 and out.repaired
    assert _ids(path) == _without(9)  # and no record (99) found inside record 9's fields


def test_torn_last_record(tmp_path, records):
    parts = list(records.values())
    parts[-1] = parts[-1][:150]
    path, out = _open(tmp_path, parts)
    assert out.dropped == 1 and out.repaired
    assert _ids(path) == _without(N)


def test_duplicate_id_keeps_the_first(tmp_path, records):
    parts = list(records.values())
    parts.insert(10, _record(3).replace(b"(#3)", b"(#3 again)"))
    path, out = _open(tmp_path, parts)
    assert out.dropped == 1 and out.repaired
    df = read_outputs(path)
    assert list(df["id"]) == _without()
    assert "(#3)" in df.loc[2, "prompt"]


def test_invalid_utf8_drops_only_its_record(tmp_path, records):
    parts = list(records.values())
    parts[11] = parts[11].replace("≥".encode(), b"\xff\xc3(", 1)  # record 12
    path, out = _open(tmp_path, parts)
    assert out.dropped == 1 and out.repaired
    path.read_bytes().decode("utf-8")  # the rewritten file is valid UTF-8
    assert _ids(path) == _without(12)


def test_many_corruptions_at_once_then_append(tmp_path, records):
    parts = list(records.values())
    parts[1] += b"\x00\x01binary\xff\r\n"  # garbage after record 2
    parts[6] = parts[6][: parts[6].index(b"Task:")]  # record 7 torn mid-prompt, after a newline
    parts[9] = parts[9][:-2] + b",extra\r\n"  # record 10: a field too many
    parts[11] = parts[11].replace("≥".encode(), b"\xff", 1)  # record 12: not UTF-8
    parts[14] += records[1]  # record 1 again after 15
    parts[19] = parts[19][:200]  # record 20 torn (last)
    path, out = _open(tmp_path, parts)
    lost = (7, 10, 12, 20)
    assert out.dropped == 6 and out.repaired
    assert _ids(path) == _without(*lost)
    assert out.done == set(_without(*lost))
    # later appends stay consistent: every id once, nothing more to repair
    assert out.append([_rich_row(i) for i in range(1, N + 1)]) == len(lost)
    again = OutputsCSV(path)
    assert again.dropped == 0 and not again.repaired
    assert sorted(_ids(path), key=int) == _without()
    assert again.done == set(_without())


def test_record_between_two_damages_is_dropped_too(tmp_path, records):
    """The price of never inventing a record: one found after damage must be followed by another."""
    parts = list(records.values())
    parts[4] += b"\x00garbage\r\n"  # after record 5
    parts[5] += b"\x00garbage\r\n"  # after record 6
    path, out = _open(tmp_path, parts)
    assert out.dropped == 1 and _ids(path) == _without(6)


@pytest.mark.parametrize("content", [b"name,age\nbob,3\n", b"\x00\xff\xfe\x00garbage\n\x01", b"\n"])
def test_foreign_file_is_refused_and_left_unchanged(tmp_path, content):
    path = tmp_path / "o.csv"
    path.write_bytes(content)
    with pytest.raises(SciqaError, match="not a sciqa outputs CSV") as err:
        OutputsCSV(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert path.read_bytes() == content


def test_empty_and_torn_header_files_are_empty(tmp_path):
    for content in (b"", b"id,split,se", HEADER[:-1]):
        path = tmp_path / "o.csv"
        path.write_bytes(content)
        out = OutputsCSV(path)
        assert out.done == set() and out.dropped == 0 and out.repaired == bool(content)
        out.append([_row(1)])
        assert _ids(path) == ["1"]
        path.unlink()


def test_long_records_are_kept(tmp_path):
    """A field over csv's default 128 KiB limit, or a record of thousands of lines."""
    big = _rich_row(21) | {"raw_output": "x" * 300_000}
    tall = _rich_row(22) | {"raw_output": "\n" * 3000}
    path = tmp_path / "o.csv"
    OutputsCSV(path).append([_rich_row(1), big, tall, _rich_row(2)])
    limit = csv.field_size_limit()
    again = OutputsCSV(path)
    assert again.done == {"1", "2", "21", "22"} and again.dropped == 0 and not again.repaired
    assert csv.field_size_limit() == limit


def test_tall_record_right_after_damage_is_kept(tmp_path, records):
    """A record of many lines is kept in sequence and right after damage alike."""
    tall = _rich_row(6) | {"raw_output": "line\n" * 60}
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=COLUMNS).writerow(tall)
    parts = list(records.values())
    parts[5] = buf.getvalue().encode()
    _, out = _open(tmp_path, parts)
    assert out.done == set(_without()) and out.dropped == 0
    parts[4] += b"\x00garbage\r\n"  # now record 6 (61+ lines) comes right after damage
    path, out = _open(tmp_path, parts)
    assert out.dropped == 1 and _ids(path) == _without()


def test_pathological_damage_is_not_quadratic(tmp_path, records):
    """Each line after damage opens a quoted field that runs to the end: unbounded, 10^8 steps."""
    import time

    parts = list(records.values())
    parts[9] += b'\x00"garbage\r\na,"x\r\n' + b'b",c,"y\r\n' * 20_000 + b'z"\r\n'  # after record 10
    t0 = time.perf_counter()
    path, out = _open(tmp_path, parts)
    assert time.perf_counter() - t0 < 10
    assert out.dropped == 1 and _ids(path) == _without()
