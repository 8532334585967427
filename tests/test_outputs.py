"""The outputs CSV: append-only, resume by id, torn last record repaired."""
from sciqa.outputs import COLUMNS, OutputsCSV, read_outputs


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
