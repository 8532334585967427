"""Hostile inputs, round 2: non-finite values and losses, duplicate and torn teacher rows, secrets in
errors, unusable folders and stores, a bad MLFLOW_RUN_ID, Ctrl-C, and step state outside the checkout."""
from __future__ import annotations

import base64
import csv
import http.server
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest

from helpers import assert_one_error, free_port, run_cli, runs_of
from sciqa.data import load_problems

TINY = ["--limit", "2", "--batch-size", "2", "--max-new-tokens", "2"]
TRAIN = ["--limit", "4", "--val-limit", "2", "--epochs", "2", "--prefix-len", "4", "--batch-size", "2",
         "--max-length", "400", "--log-every", "1"]
SECRET = "hunter2-planted-password"
API_KEY = "sk-planted-api-key-0123456789"


def _error_line(proc, needle: str) -> str:
    """Exit 2, no traceback, and one error line naming ``needle`` (beside a step's progress bars)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("sciqa: error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]
    return lines[0]


def _sqlite(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _store_runs(uri: str) -> list:
    client = mlflow.MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _ours_csv(path: Path, rows: list[dict]) -> Path:
    """A teacher CSV in our outputs format (multi-line prompts, as benchmark writes them)."""
    from sciqa.eval.outputs import COLUMNS

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _teacher_row(p, index: int, solution: str) -> dict:
    from sciqa.data.prompts import build_prompt

    return {"id": p.id, "split": "train", "setting": "QTCH", "model": "t", "adapter": "",
            "prompt": build_prompt(p, "QTCH"), "raw_output": "x", "answer_index": index,
            "answer_text": p.choices[index], "solution": solution, "finish_reason": "stop",
            "n_output_tokens": 1, "seconds": 0}


# ---------------------------------------------------------------- 1. non-finite values and losses

@pytest.mark.parametrize("args,needle", [
    (["train-prefix", "--lr", "inf"], "--lr must be a finite number"),
    (["benchmark", "--timeout", "inf"], "--timeout must be a finite number"),
    (["train-lora", "--warmup-ratio", "nan"], "--warmup-ratio must be a finite number"),
])
def test_non_finite_option_values_are_refused(cli, args, needle, experiment, tmp_path):
    proc = cli(*args, "--workdir", str(tmp_path / "w"), cwd=tmp_path, check=False)
    assert_one_error(proc, needle)
    assert runs_of(experiment) == []


def test_diverging_training_stops_at_once_and_fails_its_run(cli, experiment, tmp_path, monkeypatch):
    """The issue's ``--lr inf``, let through the option check: the first non-finite loss or gradient
    stops the training with one line naming epoch and step; the run is FAILED with that reason (so it
    is never reused) and has no adapter."""
    import sciqa.steps.train

    monkeypatch.setattr(sciqa.steps.train, "check_ranges", lambda cfg: None)
    proc = cli("train-prefix", *TRAIN, "--lr", "inf", "--workdir", str(tmp_path / "w"), cwd=tmp_path, check=False)
    line = _error_line(proc, "training diverged: the loss is nan at epoch 1, step 2")
    (run,) = runs_of(experiment)
    assert run.info.status == "FAILED" and run.data.tags["sciqa.error"] == line.removeprefix("sciqa: error: ")
    assert "train_loss" not in run.data.metrics
    assert not mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="adapter")


# ---------------------------------------------------------------- 2. and 3. teacher CSVs read record by record

def test_duplicate_teacher_ids_keep_the_last_row_warn_and_count(capsys, tmp_path):
    """One rule for teacher CSVs and ``evaluate --csv``: the last row of an id wins, a warning says
    how many repeated, and the targets' digest is that of the rows used."""
    from sciqa.eval.outputs import read_frame
    from sciqa.steps.evaluate import score_frame
    from sciqa.train import teacher

    all_train = load_problems("sample", "train", keep_all=True)
    probs = load_problems("sample", "train", limit=3)
    first = [_teacher_row(p, p.answer, f"first {i}") for i, p in enumerate(probs)]
    again = _teacher_row(probs[0], (probs[0].answer + 1) % len(probs[0].choices), "the rerun's answer")
    clean = teacher.from_csv(str(_ours_csv(tmp_path / "clean.csv", first)), all_train)
    capsys.readouterr()
    path = _ours_csv(tmp_path / "dup.csv", [*first, again])
    rows = teacher.from_csv(str(path), all_train)
    assert "1 duplicated id(s): the last row of each is used" in capsys.readouterr().err
    assert rows.duplicate_ids == 1 and len(rows) == 3
    kd = teacher.kd_targets(rows, probs, "all", "csv")
    assert '"the rerun\'s answer"' in kd.by_id[probs[0].id]
    assert kd.digest != teacher.kd_targets(clean, probs, "all", "csv").digest
    df = read_frame(path)
    _, counts, _ = score_frame(df, {p.id: p for p in all_train}, 0)
    assert counts["duplicate_ids"] == 1 and len(df) == 3


def test_duplicate_teacher_ids_are_a_metric_of_the_training_run(experiment, tmp_path):
    from sciqa.steps.train import TrainConfig, train
    from sciqa.tracking import runs as tracking

    tracking.setup()
    probs = load_problems("sample", "train", limit=4)
    rows = [_teacher_row(p, p.answer, f"first {i}") for i, p in enumerate(probs)]
    path = _ours_csv(tmp_path / "dup.csv", [*rows, _teacher_row(probs[1], probs[1].answer, "again")])
    run = train(TrainConfig(variant="pkv", teacher=True, teacher_csv=str(path), workdir=str(tmp_path / "w"),
                            limit=4, val_limit=2, epochs=1, prefix_len=4, batch_size=2, max_length=400))
    assert mlflow.get_run(run.run_id).data.metrics["duplicate_ids"] == 1


def test_a_torn_record_in_a_teacher_csv_is_skipped_by_line_and_the_rest_kept(capsys, tmp_path):
    """A record cut mid-field (a crash while a tool wrote it): its prompt lines are never read as ids."""
    from sciqa.eval.outputs import read_frame
    from sciqa.train import teacher

    all_train = load_problems("sample", "train", keep_all=True)
    probs = load_problems("sample", "train", limit=4)
    path = _ours_csv(tmp_path / "teacher.csv", [_teacher_row(p, p.answer, "ok") for p in probs])
    text = path.read_text(encoding="utf-8")
    start = text.index(f"\n{probs[1].id},") + 1
    cut = text.index("\nTask:", start) + 1  # inside the quoted prompt of the second record
    line = text[:start].count("\n") + 1
    path.write_text(text[:cut] + text[text.index(f"\n{probs[2].id},") + 1:], encoding="utf-8")
    rows = teacher.from_csv(str(path), all_train)
    assert [r.id for r in rows] == [probs[0].id, probs[2].id, probs[3].id]
    assert f"1 damaged record(s) skipped (line {line})" in capsys.readouterr().err
    assert list(read_frame(path)["id"]) == [probs[0].id, probs[2].id, probs[3].id]


# ---------------------------------------------------------------- 4. secrets

def test_redaction_covers_userinfo_secret_values_and_log_records(monkeypatch):
    from sciqa.config import redact, redact_logging

    monkeypatch.setenv("HF_TOKEN", "hf_plantedtoken123")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    text = f"GET https://me:{SECRET}@host/v1 with hf_plantedtoken123 failed"
    assert redact(text) == "GET https://***@host/v1 with *** failed"
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("sciqa-test-redaction")
    logger.addHandler(handler)
    try:
        redact_logging()
        logger.warning("retrying %s after %s", f"http://u:{SECRET}@127.0.0.1/x", "hf_plantedtoken123")
    finally:
        logger.removeHandler(handler)
    assert records == ["retrying http://***@127.0.0.1/x after ***"]


def test_a_key_variable_named_by_the_user_is_redacted_whatever_its_name(monkeypatch):
    from sciqa import config
    from sciqa.backends.openai import OpenAIBackend
    from sciqa.steps.benchmark import BenchmarkConfig

    config.KEY_VARIABLES.discard("MY_LAB_VAR")  # the backend adds to this very set
    monkeypatch.setenv("MY_LAB_VAR", "lab-credential-0042")
    assert config.redact("sent lab-credential-0042") == "sent lab-credential-0042"  # not a secret-shaped name
    OpenAIBackend.from_config(BenchmarkConfig(backend="openai", model="m", max_new_tokens=8,
                                              api_base="http://127.0.0.1:9/v1", api_key_env="MY_LAB_VAR"))
    assert config.redact("sent lab-credential-0042") == "sent ***"


class _EchoAuth(http.server.BaseHTTPRequestHandler):
    """An API that refuses every request, echoing the Authorization header it got (as some do)."""

    def do_POST(self):  # noqa: N802 - the name http.server dispatches to
        body = f"unauthorized: {self.headers.get('Authorization')}".encode()
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoAuth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_a_planted_secret_reaches_neither_stderr_nor_the_store(cli, echo_api, tmp_path):
    """--api-base with user:password, an API key in the environment; failure paths: the API port closed,
    the API refusing (echoing the key), the tracking server down. Then grep every file and stream."""
    uri = _sqlite(tmp_path / "store")
    env = {"MLFLOW_TRACKING_URI": uri, "OPENAI_API_KEY": API_KEY}
    base = ["benchmark", "--backend", "openai", "--model", "tiny-llava", "--max-retries", "0", "--timeout", "5",
            *TINY, "--workdir", str(tmp_path / "w")]
    out = []
    for api_base in (f"http://user:{SECRET}@127.0.0.1:{free_port()}/v1",  # nothing listens
                     f"http://user:{SECRET}@127.0.0.1:{echo_api}/v1",  # echoes Basic base64(user:password)
                     f"http://127.0.0.1:{echo_api}/v1"):  # echoes Bearer API_KEY
        proc = cli(*base, "--api-base", api_base, cwd=tmp_path, env=env, check=False)
        _error_line(proc, "API request to http://")
        out.append(proc.stdout + proc.stderr)
    assert "unauthorized: Basic ***" in out[1] and "unauthorized: Bearer ***" in out[2]
    proc = cli(*base, "--api-base", "http://127.0.0.1:9/v1", cwd=tmp_path, check=False,
               env={**env, "MLFLOW_TRACKING_URI": f"http://user:{SECRET}@127.0.0.1:{free_port()}"})
    assert_one_error(proc, "cannot be reached")
    out.append(proc.stdout + proc.stderr)
    runs = _store_runs(uri)
    assert len(runs) == 3 and all(r.info.status == "FAILED" and "***" in r.data.tags["sciqa.error"] for r in runs)
    planted = [SECRET, API_KEY, base64.b64encode(f"user:{SECRET}".encode()).decode()]
    assert not [s for s in planted for text in out if s in text], out
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and any(s.encode() in p.read_bytes() for s in planted)]
    assert leaks == []


# ---------------------------------------------------------------- 5. and 7. folders and stores that cannot be used

@pytest.fixture
def refusing_folder(tmp_path, monkeypatch):
    """A folder that refuses new files while ``os.access`` says it may be written: what root sees on
    an NFS mount with root_squash, or anyone in a working folder another shell removed. Made with
    ``chattr +i`` (refuses root too) and an ``os.access`` that answers yes."""
    folder = tmp_path / "refusing"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_unwritable_workdir_is_one_line_at_once_and_creates_no_run(cli, refusing_folder, tmp_path):
    uri = _sqlite(tmp_path / "store")
    proc = cli("benchmark", *TINY, "--workdir", str(refusing_folder / "w"), cwd=tmp_path, check=False,
               env={"MLFLOW_TRACKING_URI": uri})
    assert_one_error(proc, "is not writable")
    assert not (tmp_path / "store" / "mlflow.db").exists()


def test_default_store_in_an_unwritable_folder_is_one_line_at_once(cli, refusing_folder, tmp_path, monkeypatch):
    from sciqa.tracking import store

    monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 5.0)  # before: the lock could not be made and was waited on
    started = time.monotonic()
    proc = cli("benchmark", *TINY, "--workdir", str(tmp_path / "w"), cwd=refusing_folder, check=False,
               env={"MLFLOW_TRACKING_URI": None})
    assert_one_error(proc, "is not writable")
    assert time.monotonic() - started < 30 and not (tmp_path / "w").exists()


def test_sqlite_store_in_a_missing_folder_is_refused_and_not_created(cli, tmp_path):
    proc = cli("benchmark", *TINY, "--workdir", str(tmp_path / "w"), cwd=tmp_path, check=False,
               env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/no/such/dir/x.db"})
    assert_one_error(proc, "does not exist")
    assert not (tmp_path / "no").exists()


# ---------------------------------------------------------------- 6. run ids and models that do not exist

def test_mlflow_run_id_of_no_run_is_one_line(cli, experiment, tmp_path):
    proc = cli("benchmark", *TINY, "--workdir", str(tmp_path / "w"), cwd=tmp_path, check=False,
               env={"MLFLOW_RUN_ID": "deadbeef"})
    assert_one_error(proc, "MLFLOW_RUN_ID: run 'deadbeef'")
    assert runs_of(experiment) == []


@pytest.mark.slow  # MLflow's warning comes once per process: a real one
def test_missing_registered_model_version_is_one_line(tmp_path):
    uri = _sqlite(tmp_path / "store")
    mlflow.MlflowClient(uri).search_experiments()  # an existing store
    proc = run_cli("score", "--adapter", "models:/sciqa-nope/3", "--limit", "1", cwd=tmp_path, check=False,
                   env={"MLFLOW_TRACKING_URI": uri})
    assert_one_error(proc, "registered adapter 'models:/sciqa-nope/3' not found")


# ---------------------------------------------------------------- 8. a teacher CSV that cannot teach

@pytest.mark.parametrize("content", ["", "zzz"])
def test_empty_or_unusable_teacher_csv_touches_no_store(cli, content, tmp_path):
    probs = load_problems("sample", "train", limit=3)
    path = tmp_path / "teacher.csv"
    if content:
        rows = [{**_teacher_row(p, 0, ""), "answer_index": "", "raw_output": content} for p in probs]
        _ours_csv(path, rows)
    else:
        path.write_text("")
    uri = _sqlite(tmp_path / "store")
    proc = cli("train-prefix", "--teacher", "true", "--teacher-csv", str(path), "--limit", "3",
               "--workdir", str(tmp_path / "w"), cwd=tmp_path, check=False, env={"MLFLOW_TRACKING_URI": uri})
    assert_one_error(proc, "teacher")
    assert not (tmp_path / "store" / "mlflow.db").exists()


# ---------------------------------------------------------------- 9. Ctrl-C

def test_ctrl_c_says_where_the_run_stands_exits_130_and_resumes(cli, experiment, tmp_path, monkeypatch):
    import sciqa.steps.benchmark

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(sciqa.steps.benchmark, "parse_output", interrupt)  # Ctrl-C while the first batch is handled
        proc = cli("benchmark", *TINY, cwd=tmp_path, check=False)
    (run,) = runs_of(experiment)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "Aborted!" not in proc.stderr and f"run {run.info.run_id} (benchmark" in proc.stderr
    assert "resumable" in proc.stderr and run.info.status == "KILLED"
    again = cli("benchmark", *TINY, cwd=tmp_path)
    assert again.stdout.strip().endswith(run.info.run_id)
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.slow  # a real SIGINT to a real process
def test_sigint_to_a_real_process_exits_130_naming_the_run(experiment, tmp_path):
    work = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, "-m", "sciqa", "benchmark", "--limit", "200", "--batch-size", "1",
                             "--max-new-tokens", "32", "--workdir", str(work)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.time() + 300
    while time.time() < deadline and not list(work.glob("*/*.csv")) and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    (run,) = runs_of(experiment)
    assert proc.returncode == 130, stderr[-2000:]
    assert f"sciqa: interrupted: run {run.info.run_id}" in stderr and "Aborted!" not in stderr
    assert run.info.status == "KILLED"


# ---------------------------------------------------------------- 10. step state outside the working folder

def test_step_state_defaults_to_the_cache_not_the_working_folder(cli, experiment, tmp_path):
    cli("benchmark", *TINY, cwd=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing in the folder it ran in (under `mlflow run`: the checkout)
    from sciqa.steps.benchmark import workdir_path

    (run,) = runs_of(experiment)
    key = run.data.tags["sciqa.key"]
    assert (workdir_path("") / key / "run_id").read_text() == run.info.run_id
    assert "workdir: {type: string" in (Path(__file__).parents[1] / "MLproject").read_text()
