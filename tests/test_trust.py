"""Step runs you can trust: exact cache keys, content digests, force, resume, one writer, honest evaluation."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest

from helpers import assert_one_error, last_run_id, run_cli, runs_of
from sciqa import files
from sciqa.config import operational, params_of
from sciqa.data import SAMPLE_DIR, load_problems
from sciqa.eval.outputs import read_outputs
from sciqa.tracking import runs as tracking

TINY = ["--limit", "3", "--batch-size", "3", "--max-new-tokens", "2"]


def _configs():
    from sciqa.steps.benchmark import BenchmarkConfig
    from sciqa.steps.evaluate import EvaluateConfig
    from sciqa.steps.pipeline import MainConfig
    from sciqa.steps.score import ScoreConfig
    from sciqa.steps.train import TrainConfig

    return [BenchmarkConfig, ScoreConfig, TrainConfig, EvaluateConfig, MainConfig]


@pytest.mark.parametrize("cls", _configs(), ids=lambda c: c.__name__)
def test_every_config_field_is_keyed_or_operational_and_logged(cls):
    """Field by field: nothing is dropped by a name filter (max_new_tokens once was: it contains 'token')."""
    cfg = cls()
    ops = operational(cfg)
    from sciqa.config import identity

    keyed = identity(cfg)
    for f in dataclasses.fields(cls):
        assert (f.name in keyed) != (f.name in ops or f.name == "force"), f.name
        if f.name != "force":
            assert f.name in params_of({**keyed, **ops}), f.name
    assert tracking.step_key("x", {**keyed, "max_new_tokens": 2}) != tracking.step_key("x", {**keyed, "max_new_tokens": 3})


def test_secrets_in_urls_are_redacted_and_key_names_never_filter():
    logged = params_of({"api_base": "https://user:hunter2@api.example/v1", "max_new_tokens": 7, "api_key_env": "K"})
    assert logged == {"api_base": "https://***@api.example/v1", "max_new_tokens": "7", "api_key_env": "K"}


def test_source_digest_changes_with_any_source_file(tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(SAMPLE_DIR.parents[1], pkg, ignore=shutil.ignore_patterns("__pycache__", "sample"))
    before = files.folder_digest(pkg, "*.py")
    (pkg / "data" / "prompts.py").write_text((pkg / "data" / "prompts.py").read_text() + "\n# an uncommitted edit\n")
    assert files.folder_digest(pkg, "*.py") != before
    assert files.source_digest() in tracking.code_version()


def test_budget_change_is_a_new_run_and_force_recomputes(cli, experiment, tmp_path):
    w = ["--workdir", str(tmp_path / "w")]
    first = last_run_id(cli("benchmark", *TINY, *w, cwd=tmp_path))
    other = cli("benchmark", *TINY[:-1], "5", *w, cwd=tmp_path)
    assert "reusing" not in other.stdout and last_run_id(other) != first
    assert mlflow.get_run(last_run_id(other)).data.params["max_new_tokens"] == "5"
    forced = cli("benchmark", *TINY, *w, "--force", "true", cwd=tmp_path)
    run = mlflow.get_run(last_run_id(forced))
    assert run.info.run_id != first and run.data.metrics["rows_generated"] == 3
    again = cli("benchmark", *TINY, *w, cwd=tmp_path)
    assert "reusing finished run" in again.stdout


def _original_layout(folder, n: int = 4, images: bool = False):
    """A small dataset folder in the original layout, copied from the sample (optionally with images)."""
    problems = json.loads((SAMPLE_DIR / "problems.json").read_text())
    splits = json.loads((SAMPLE_DIR / "pid_splits.json").read_text())
    keep = {s: [p for p in splits[s] if problems[p]["lecture"] and problems[p]["solution"]][:n] for s in splits}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "problems.json").write_text(json.dumps({p: problems[p] for ids in keep.values() for p in ids}))
    (folder / "pid_splits.json").write_text(json.dumps(keep))
    return folder, keep


def test_missing_and_corrupt_images(cli, experiment, tmp_path):
    data, keep = _original_layout(tmp_path / "data", n=40)
    problems = json.loads((data / "problems.json").read_text())
    with_image = [p for p in keep["val"] if problems[p].get("image")][:2]
    assert len(with_image) == 2
    from PIL import Image

    img = data / "images" / "val" / with_image[0]
    img.mkdir(parents=True)
    Image.new("RGB", (30, 20), "red").save(img / problems[with_image[0]]["image"])
    args = ["benchmark", "--dataset", str(data), "--limit", str(keep["val"].index(with_image[1]) + 1),
            "--batch-size", "8", "--max-new-tokens", "2", "--workdir", str(tmp_path / "w")]
    proc = cli(*args, cwd=tmp_path)
    assert "1 image file(s) missing" in proc.stderr
    assert mlflow.get_run(last_run_id(proc)).data.metrics["images_missing"] == 1
    n = len(runs_of(experiment))
    assert_one_error(cli(*args, "--strict-images", "true", cwd=tmp_path, check=False), "image file(s) missing")
    (img / problems[with_image[0]]["image"]).write_bytes(b"not a picture")
    assert_one_error(cli(*args, cwd=tmp_path, check=False), "cannot be read")
    assert len(runs_of(experiment)) == n


@pytest.mark.parametrize("args,needle", [
    (["--limit", "-3"], "--limit must be at least 0 (got -3)"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--answer-mode", "best"], "unknown answer mode 'best'"),
    (["--limit", "many"], "'many' is not a valid integer"),
])
def test_numeric_and_choice_options_are_checked(cli, args, needle, experiment, tmp_path):
    assert_one_error(cli("benchmark", *args, "--workdir", str(tmp_path / "w"), cwd=tmp_path, check=False), needle)
    assert runs_of(experiment) == [] and not (tmp_path / "w").exists()


def test_train_ranges_and_help_per_command(cli, tmp_path):
    assert_one_error(cli("train-prefix", "--lr", "0", cwd=tmp_path, check=False), "--lr must be greater than 0")
    assert_one_error(cli("train-lora", "--epochs", "0", cwd=tmp_path, check=False), "--epochs must be at least 1")
    lora = cli("train-lora", "--help", cwd=tmp_path).stdout
    prefix = cli("train-prefix", "--help", cwd=tmp_path).stdout
    assert "--variant" not in lora and "--prefix-len" not in lora and "--lora-r" in lora
    assert "--lora-r" not in prefix and "--prefix-len" in prefix
    assert "one of hf, vllm, openai" in cli("benchmark", "--help", cwd=tmp_path).stdout


def _running_benchmark(tmp_path, model: str = "tiny-llava", split: str = "train") -> str:
    """A benchmark run left RUNNING (its process was killed) with a partial outputs CSV."""
    from sciqa.eval.outputs import OutputsCSV

    probs = load_problems("sample", split, limit=2)
    path = tmp_path / f"{split}_QTCH.csv"
    OutputsCSV(path).append([{"id": p.id, "split": split, "setting": "QTCH", "model": model, "adapter": "",
                              "prompt": "", "raw_output": json.dumps({"answer": p.answer_text, "solution": "s"}),
                              "answer_index": p.answer, "answer_text": p.answer_text, "solution": "s",
                              "finish_reason": "stop", "n_output_tokens": 1, "seconds": 0} for p in probs])
    tracking.setup()
    client = mlflow.MlflowClient()
    run = client.create_run(tracking.experiment_id(), tags={"sciqa.step": "benchmark", "sciqa.split": split})
    client.log_param(run.info.run_id, "dataset", "sample")
    client.log_artifact(run.info.run_id, str(path), "outputs")
    return run.info.run_id


def test_unfinished_runs_are_neither_evaluated_nor_taught_from(cli, experiment, tmp_path):
    run_id = _running_benchmark(tmp_path)
    assert_one_error(cli("evaluate", "--run", run_id, cwd=tmp_path, check=False), "is RUNNING, not finished")
    assert_one_error(cli("train-prefix", "--teacher", "true", "--teacher-run", run_id, "--workdir",
                         str(tmp_path / "w"), cwd=tmp_path, check=False), "is RUNNING, not finished")
    run = mlflow.get_run(run_id)
    assert run.info.status == "RUNNING" and "acc" not in run.data.metrics


def test_mlflow_run_id_of_a_run_with_other_parameters_is_refused(cli, experiment, tmp_path):
    first = last_run_id(cli("benchmark", *TINY, "--workdir", str(tmp_path / "w"), cwd=tmp_path))
    proc = cli("benchmark", *TINY, "--setting", "QTCHS", "--workdir", str(tmp_path / "w"), cwd=tmp_path,
               check=False, env={"MLFLOW_RUN_ID": first})
    assert_one_error(proc, f"MLFLOW_RUN_ID names run {first}")
    proc = cli("evaluate", "--run", first, cwd=tmp_path, check=False, env={"MLFLOW_RUN_ID": first})
    assert_one_error(proc, f"MLFLOW_RUN_ID names run {first}")  # evaluate never turns a step's run into a pointer
    run = mlflow.get_run(first)
    assert run.data.tags["sciqa.setting"] == "QTCH" and run.info.status == "FINISHED"
    assert "sciqa.reused_run" not in run.data.tags and "mlflow.parentRunId" not in run.data.tags


@pytest.mark.slow  # two real processes race for the same run
def test_two_identical_invocations_share_nothing_but_the_result(experiment, tmp_path):
    args = [sys.executable, "-m", "sciqa", "benchmark", "--limit", "8", "--batch-size", "2", "--max-new-tokens", "4",
            "--workdir", str(tmp_path / "w")]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=os.environ.copy(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = runs_of(experiment)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert sum("reusing finished run" in out for out, _ in outs) == 1
    df = read_outputs(next((tmp_path / "w").glob("*/validation_QTCH.csv")))
    assert len(df) == 8 and df["id"].is_unique and runs[0].data.metrics["rows_generated"] == 8


def test_evaluate_counts_duplicates_invalid_indices_and_number_base(cli, experiment, tmp_path):
    p = load_problems("sample", "validation", limit=4)
    assert all(len(x.choices) >= 2 for x in p)
    df = pd.DataFrame({"id": [p[0].id, p[0].id, p[1].id, p[2].id, p[3].id],
                       "raw_output": ["", "", "", "", ""],
                       "answer_index": [1 - min(p[0].answer, 1), p[0].answer + 1, 99, "1.9", p[3].answer + 1]})
    path = tmp_path / "ext.csv"
    df.to_csv(path, index=False)
    out = cli("evaluate", "--csv", str(path), "--number-base", "1", cwd=tmp_path)
    m = mlflow.get_run(last_run_id(out)).data.metrics
    assert "1 duplicated id(s)" in out.stderr
    assert m["n"] == 4 and m["duplicate_ids"] == 1 and m["answer_index_invalid"] == 2
    assert m["acc"] == pytest.approx(50.0) and m["unmapped_rate"] == pytest.approx(50.0)


@pytest.mark.parametrize("case", ["empty", "header_only", "binary"])
def test_bad_evaluate_csv_is_one_line(cli, case, experiment, tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes({"empty": b"", "header_only": b"id,raw_output\n", "binary": b"\x00\xff\xfe" * 50}[case])
    assert_one_error(cli("evaluate", "--csv", str(path), cwd=tmp_path, check=False), "CSV")
    assert runs_of(experiment) == []


def test_teacher_csv_garbage_and_bad_indices(cli, experiment, tmp_path):
    garbage = tmp_path / "g.csv"
    garbage.write_bytes(bytes(range(256)) * 20)
    args = ["train-prefix", "--teacher", "true", "--limit", "4", "--workdir", str(tmp_path / "w")]
    assert_one_error(cli(*args, "--teacher-csv", str(garbage), cwd=tmp_path, check=False), "teacher CSV")
    probs = load_problems("sample", "train", limit=4)
    ours = tmp_path / "ours.csv"
    pd.DataFrame({"id": [q.id for q in probs], "raw_output": ["" for _ in probs],
                  "answer_index": ["x", "", "7", "0.5"]}).to_csv(ours, index=False)
    assert_one_error(cli(*args, "--teacher-csv", str(ours), cwd=tmp_path, check=False), "no usable answer")
    assert runs_of(experiment) == []


@pytest.mark.parametrize("uri,needle", [
    ("./mlruns", "file store"), ("file:///tmp/mlruns", "file store"), ("bogus://x", "unknown scheme 'bogus'"),
    ("postgresql://u:secretpw@127.0.0.1/db", "database driver"),
])
def test_unusable_tracking_uris(cli, uri, needle, tmp_path):
    proc = cli("benchmark", *TINY, cwd=tmp_path, check=False, env={"MLFLOW_TRACKING_URI": uri})
    line = assert_one_error(proc, needle)
    assert "secretpw" not in line
    assert not (tmp_path / "sciqa-work").exists() and not (tmp_path / "mlflow.db").exists()


def test_bad_input_leaves_no_store_and_no_workdir(cli, tmp_path):
    env = {"MLFLOW_TRACKING_URI": ""}
    assert_one_error(cli("benchmark", "--setting", "QTX", cwd=tmp_path, check=False, env=env), "unknown setting")
    assert_one_error(cli("score", "--adapter-dir", str(tmp_path), cwd=tmp_path, check=False, env=env),
                     "not an adapter folder")
    assert sorted(os.listdir(tmp_path)) == []


def test_broken_adapter_config_is_one_line(cli, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{not json")
    (folder / "adapter.safetensors").write_bytes(b"")
    assert_one_error(cli("score", "--adapter-dir", str(folder), cwd=tmp_path, check=False), "not valid JSON")


def test_unwritable_cwd_store_is_one_line_at_once(cli, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere: the permission check cannot fail")
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o555)
    t0 = time.time()
    assert_one_error(cli("benchmark", *TINY, cwd=locked, check=False, env={"MLFLOW_TRACKING_URI": ""}),
                     "not writable")
    assert time.time() - t0 < 30


def test_unknown_model_offline_fails_in_seconds(tmp_path):
    t0 = time.time()
    assert_one_error(run_cli("benchmark", "--model", "nobody/no-such-model", cwd=tmp_path, check=False,
                             env={"HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": ""}), "unknown model")
    assert time.time() - t0 < 30 and os.listdir(tmp_path) == []


def test_prerequisites_are_checked_before_work(monkeypatch, tmp_path):
    from sciqa.errors import SciqaError
    from sciqa.eval import metrics, wordnet

    monkeypatch.setattr(wordnet, "_DEBIAN_WORDNET", tmp_path / "nowhere")
    monkeypatch.setenv("SCIQA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SciqaError, match="WordNet not found"):
        metrics.check_prerequisites()
