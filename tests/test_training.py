"""Training steps against the test MLflow server: curves, checkpoints, resume, teachers, bad input."""
from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from helpers import run_cli
from sciqa.data import load_problems
from sciqa.slurm import job
from sciqa.steps.train import TrainConfig, train
from sciqa.tracking import runs as tracking

FAST = dict(limit=4, val_limit=2, epochs=3, prefix_len=4, batch_size=2, max_length=400, lr=3e-2, log_every=1)
CLI_FAST = ["--limit", "4", "--val-limit", "2", "--epochs", "2", "--prefix-len", "4", "--batch-size", "2",
            "--max-length", "400", "--lr", "0.03", "--log-every", "1"]


def _history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(mlflow.MlflowClient().get_metric_history(run_id, key),
                                               key=lambda m: m.step)]


def _artifacts(run_id: str, path: str = "") -> set[str]:
    return {a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path=path or None)}


@pytest.mark.parametrize("variant", ["pkv", "peft", "lora"])
def test_loss_decreases_with_one_point_per_epoch(variant, experiment, tmp_path):
    tracking.setup()
    step = "train_lora" if variant == "lora" else "train_prefix"
    run = train(TrainConfig(variant=variant, workdir=str(tmp_path), **FAST), step=step)
    r = mlflow.get_run(run.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.tags["sciqa.step"] == step and r.data.tags["sciqa.variant"] == variant
    assert r.data.tags["sciqa.teacher"] == "false" and int(r.data.params["trainable_params"]) > 0
    train_loss = _history(run.run_id, "train_loss")
    assert [s for s, _ in train_loss] == [1, 2, 3]
    assert [s for s, _ in _history(run.run_id, "val_loss_golden")] == [1, 2, 3]
    assert [s for s, _ in _history(run.run_id, "epoch_seconds")] == [1, 2, 3]
    assert train_loss[-1][1] < train_loss[0][1] - 0.05
    assert len(_history(run.run_id, "train_loss_step")) == 6  # 2 optimizer steps per epoch, every step
    assert {"checkpoints/epoch_1", "checkpoints/epoch_2", "checkpoints/epoch_3"} <= _artifacts(run.run_id, "checkpoints")
    assert "plots/loss.png" in _artifacts(run.run_id, "plots")
    assert {"adapter/adapter.safetensors", "adapter/adapter_config.json"} <= _artifacts(run.run_id, "adapter")
    # a second call with the same parameters reuses the finished run
    assert train(TrainConfig(variant=variant, workdir=str(tmp_path), **FAST), step=step).reused


def _final(run_id: str, dest: Path) -> dict[str, torch.Tensor]:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter/adapter.safetensors",
                                                dst_path=str(dest))
    return load_file(local)


@pytest.mark.slow  # kill -9 of a real process
def test_kill_after_epoch_then_resume_equals_uninterrupted(mlflow_server, experiment, tmp_path):
    """kill -9 after epoch 1, rerun the same command on a 'fresh node' (local checkpoints gone): it
    resumes the same run from the downloaded checkpoint and ends exactly as a clean run."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    args = ["train-prefix", "--variant", "pkv", *CLI_FAST, "--limit", "12", "--epochs", "3"]
    proc = subprocess.Popen([sys.executable, "-m", "sciqa", *args, "--workdir", str(tmp_path / "w1")], cwd=tmp_path,
                            env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "w1").glob("*/checkpoints/epoch_1")):
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    runs = mlflow.search_runs([experiment], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "RUNNING"
    run_id = runs[0].info.run_id
    shutil.rmtree(tmp_path / "w1")
    resumed = run_cli(*args, "--workdir", str(tmp_path / "w2"), cwd=tmp_path)
    assert "downloaded checkpoint epoch_" in resumed.stdout and "resumed from epoch_" in resumed.stdout
    assert run_id in resumed.stdout
    # the uninterrupted reference, in its own experiment
    ref_exp = f"ref-{experiment}"
    mlflow.create_experiment(ref_exp)
    clean = run_cli(*args, "--workdir", str(tmp_path / "w3"), cwd=tmp_path, env={"MLFLOW_EXPERIMENT_NAME": ref_exp})
    ref_id = clean.stdout.strip().split()[-1]
    for key in ("train_loss", "val_loss_golden"):
        got, want = _history(run_id, key), _history(ref_id, key)
        assert [s for s, _ in got] == [1, 2, 3]
        assert [s for s, _ in got] == [s for s, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    a, b = _final(run_id, tmp_path / "a"), _final(ref_id, tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)


def test_signal_saves_mid_epoch_checkpoint_and_resume_matches(experiment, tmp_path):
    """A stop request (SIGUSR1/SIGTERM set the event) saves at the next step boundary; the rerun
    continues mid-epoch and ends with the adapter of an uninterrupted run."""
    tracking.setup()
    cfg = dict(FAST, epochs=2, limit=6)
    job.request_stop("SIGTERM")
    try:
        with pytest.raises(job.Stopped) as info:
            train(TrainConfig(variant="peft", workdir=str(tmp_path / "w"), **cfg))
    finally:
        job.reset()
    assert info.value.what == "checkpoint epoch_0-step_1" and info.value.code == 75
    assert mlflow.search_runs(output_format="list")[0].info.status == "KILLED"  # not requeued: KILLED
    run = train(TrainConfig(variant="peft", workdir=str(tmp_path / "w"), **cfg))
    assert not run.reused and len(_history(run.run_id, "train_loss")) == 2
    ref = train(TrainConfig(variant="peft", workdir=str(tmp_path / "r"), force=True, **cfg))
    a, b = _final(run.run_id, tmp_path / "a"), _final(ref.run_id, tmp_path / "b")
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)
    assert _history(run.run_id, "train_loss")[-1][1] == pytest.approx(_history(ref.run_id, "train_loss")[-1][1])


@pytest.mark.slow  # SIGTERM to a real process
def test_sigterm_exits_with_requeue_code(mlflow_server, experiment, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "sciqa", "train-prefix", *CLI_FAST, "--epochs", "50",
                             "--workdir", str(tmp_path)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ckpts = tmp_path
    deadline = time.time() + 120
    while time.time() < deadline and not list(ckpts.glob("*/checkpoints/epoch_1")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert "stopped by SIGTERM" in err


def _study_csv(path: Path, rows: list[tuple], sep: str = "\t") -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=sep)
        w.writerow(["index", "input", "answer", "explanation"])
        w.writerows(rows)
    return path


def test_teacher_csv_study_format_counts_unparseable(experiment, tmp_path):
    tracking.setup()
    probs = load_problems("sample", "train", limit=4)
    rows = [(p.id, "q", p.choices[(p.answer + 1) % len(p.choices)], f"teacher says {i}") for i, p in enumerate(probs[:3])]
    rows.append((probs[3].id, "q", "no idea at all", "??"))
    path = _study_csv(tmp_path / "teacher.tsv", rows)
    run = train(TrainConfig(variant="pkv", teacher=True, teacher_csv=str(path), workdir=str(tmp_path),
                            **dict(FAST, epochs=1)))
    r = mlflow.get_run(run.run_id)
    assert r.data.tags["sciqa.teacher"] == "true"
    assert r.data.metrics["teacher_rows_unmapped"] == 1 and r.data.metrics["train_examples"] == 3
    # the KD target is the teacher's (wrong) answer, not the golden one
    from sciqa.train import teacher

    rows = teacher.from_csv(str(path), load_problems("sample", "train", keep_all=True))
    kd = teacher.kd_targets(rows, probs, "all", "csv")
    assert kd.counts["teacher_rows_unmapped"] == 1 and '"teacher says 0"' in kd.by_id[probs[0].id]
    assert probs[0].choices[(probs[0].answer + 1) % len(probs[0].choices)] in kd.by_id[probs[0].id]
    from sciqa.errors import SciqaError

    with pytest.raises(SciqaError, match="3 wrong"):  # every mapped teacher answer here is wrong
        teacher.kd_targets(rows, probs, "correct", "csv")


def _fake_benchmark(tmp_path: Path, split: str = "train", model: str = "tiny-llava") -> str:
    """A finished benchmark-like run whose outputs CSV holds mapped teacher answers."""
    from sciqa.eval.outputs import OutputsCSV

    probs = load_problems("sample", split, limit=4)
    path = tmp_path / f"{split}_QTCH.csv"
    OutputsCSV(path).append([{"id": p.id, "split": split, "setting": "QTCH", "model": model, "adapter": "",
                              "prompt": "", "raw_output": "x", "answer_index": p.answer, "answer_text": p.answer_text,
                              "solution": "from the teacher", "finish_reason": "stop", "n_output_tokens": 1,
                              "seconds": 0} for p in probs])
    with mlflow.start_run() as r:
        mlflow.set_tags({"sciqa.step": "benchmark", "sciqa.split": split, "sciqa.model": model})
        mlflow.log_artifact(str(path), "outputs")
    return r.info.run_id


def test_default_teacher_is_the_matching_train_benchmark_reused(experiment, tmp_path):
    """Without --teacher-run/--teacher-csv the teacher is the train benchmark of --teacher-model with the
    teacher options (run first, then reused by its key); an unrelated train benchmark is not picked."""
    from sciqa.steps.benchmark import benchmark
    from sciqa.steps.train import teacher_benchmark_config

    tracking.setup()
    _fake_benchmark(tmp_path)  # a finished train benchmark of tiny-llava, but not of these options
    cfg = TrainConfig(variant="lora", teacher=True, teacher_max_new_tokens=40, workdir=str(tmp_path),
                      **dict(FAST, epochs=1))
    expected = benchmark(teacher_benchmark_config(cfg))
    run = train(cfg, step="train_lora")
    assert mlflow.get_run(run.run_id).data.tags["sciqa.teacher_run"] == expected.run_id
    assert len(mlflow.search_runs([experiment], output_format="list")) == 3


def _no_runs(exp: str) -> bool:
    return mlflow.search_runs([exp], output_format="list") == []


@pytest.mark.parametrize("case", ["variant", "columns", "ids", "no_train_outputs", "lora_on_prefix_cmd"])
def test_bad_input_is_one_line_exit_2_and_no_run(cli, case, experiment, tmp_path):
    tracking.setup()
    args = ["train-prefix", *CLI_FAST, "--workdir", str(tmp_path)]
    if case == "variant":
        args += ["--variant", "ia3"]
        want = "unknown prefix variant 'ia3'"
    elif case == "columns":
        bad = tmp_path / "t.csv"
        bad.write_text("index,input,answer\n1,q,a\n")
        args += ["--teacher", "true", "--teacher-csv", str(bad)]
        want = "lacks columns explanation"
    elif case == "ids":
        args += ["--teacher", "true", "--teacher-csv", str(_study_csv(tmp_path / "t.csv", [("nope-1", "q", "a", "b")], ","))]
        want = "ids not in the train split"
    elif case == "no_train_outputs":
        rid = _fake_benchmark(tmp_path, split="validation")
        args += ["--teacher", "true", "--teacher-run", rid]
        want = "has no train-split outputs"
    else:
        args = ["train-lora", *CLI_FAST, "--prefix-len", "2", "--gradient-checkpointing", "true",
                "--workdir", str(tmp_path)]
        args[args.index("train-lora")] = "train-prefix"
        want = "No such option '--gradient-checkpointing'"
    before = {r.info.run_id for r in mlflow.search_runs([experiment], output_format="list")}
    proc = cli(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("sciqa: error")]
    assert len(lines) == 1 and want in lines[0], proc.stderr[-2000:]
    assert {r.info.run_id for r in mlflow.search_runs([experiment], output_format="list")} == before


def test_slurm_checks_have_no_side_effects(experiment, tmp_path):
    """The submit-time checks find the same errors and start no run, write no file."""
    from sciqa.errors import SciqaError
    from sciqa.steps.train import check_lora, check_prefix

    tracking.setup()
    bad = tmp_path / "t.csv"
    bad.write_text("index,input,answer\n1,q,a\n")
    with pytest.raises(SciqaError, match="lacks columns"):
        check_prefix(TrainConfig(teacher=True, teacher_csv=str(bad), workdir=str(tmp_path / "w")))
    with pytest.raises(SciqaError, match="gradient checkpointing"):
        check_prefix(TrainConfig(gradient_checkpointing=True, workdir=str(tmp_path / "w")))
    check_lora(TrainConfig(gradient_checkpointing=True, workdir=str(tmp_path / "w")))  # fine for LoRA
    assert _no_runs(experiment) and not (tmp_path / "w").exists()


def test_linear_schedule_equals_transformers_and_loads_its_state():
    """sciqa's own schedule (no transformers.optimization import) gives transformers' factors, and a
    checkpoint's scheduler state saved by either loads into the other."""
    from transformers import get_linear_schedule_with_warmup

    from sciqa.train.loop import linear_schedule

    def lrs(make, steps=12):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        sched, seen = make(opt), []
        for _ in range(steps):
            opt.step()
            sched.step()
            seen.append(sched.get_last_lr()[0])
        return sched, seen

    theirs, want = lrs(lambda o: get_linear_schedule_with_warmup(o, 3, 10))
    ours, got = lrs(lambda o: linear_schedule(o, 3, 10))
    assert got == want
    assert ours.state_dict() == theirs.state_dict()
    resumed = linear_schedule(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.5), 3, 10)
    resumed.load_state_dict(theirs.state_dict())
    assert resumed.last_epoch == 12 and resumed.get_last_lr() == theirs.get_last_lr()


def test_examples_go_through_the_processor_once_per_run(tmp_path, monkeypatch):
    """Each train and validation example is processed once, not once per epoch and batch."""
    from sciqa import models
    from sciqa.adapters import attach
    from sciqa.data.prompts import build_prompt, target_json
    from sciqa.train.collate import Example
    from sciqa.train.loop import LoopConfig
    from sciqa.train.loop import train as run_loop

    lm = models.load("tiny-qwen2-vl", dtype="float32", device="cpu")
    calls = []
    encode = lm.family.encode
    monkeypatch.setattr(lm.family, "encode", lambda *a, **k: calls.append(len(a[1])) or encode(*a, **k))
    exs = [Example(p, build_prompt(p, "QTCH"), target_json(p.answer_text, p.solution))
           for p in load_problems("sample", "train", limit=6)]
    history = run_loop(attach(lm, "pkv", {"prefix_len": 4}), lm, "tiny-qwen2-vl", exs[:4], exs[4:],
                       LoopConfig(epochs=3, batch_size=2, log_every=0), tmp_path,
                       log_metrics=lambda m, s: None, log_checkpoint=lambda p: None)
    assert len(history) == 3
    assert calls == [1] * 6  # one call per example, one example per call
