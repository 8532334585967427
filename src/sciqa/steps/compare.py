"""``sciqa compare``: arms of evaluated runs (one run, or its seed runs) against a baseline arm, joined on the
per-row scores they logged (``metrics/*_rows.csv``); ``main``'s report and grid tables share these pieces."""
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from sciqa.errors import SciqaError
from sciqa.eval.metrics import EXPLANATION
from sciqa.eval.parsing import FUZZY_RULES
from sciqa.eval.stats import METHOD, compare_runs, forest_plot, n_tests, to_markdown, to_text
from sciqa.files import digest
from sciqa.tracking import runs as tracking
from sciqa.tracking.runs import step_run

RUN_FIELDS = ("split", "setting", "answer_mode", "choice_score", "max_new_tokens", "model", "adapter", "data_digest")
READING = (
    "How to read it: each difference is the run minus its baseline on the same problems (n). The "
    "95 % interval covers the sampling of problems and, where an arm has several seeds, the seed-to-seed "
    "training variance; p is the test that interval inverts, so an interval that crosses zero is a p above "
    "0.05: the data cannot tell the two apart at that level, whatever the point estimate says. Scores come "
    "from the evaluation split, the common yardstick; val_loss_golden (training) is on golden targets and "
    "favours golden training by construction, so it is not compared here.")
YARDSTICKS = (
    "Accuracy is the only target-neutral yardstick: the explanation metrics (BLEU, ROUGE-L, METEOR, cosine "
    "and the overall score) are referenced to the dataset's lecture + solution, which is what golden "
    "training learns to write, so they favour golden training by construction. ROUGE-L and METEOR skip "
    "empty explanations; BLEU and cosine count them (as zero overlap).")


def run_rows(run_id: str) -> pd.DataFrame:
    """A run's per-row scores (``metrics/*_rows.csv``), or one line naming the command that makes them."""
    found = [a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="metrics")
             if a.path.endswith("_rows.csv")]
    if len(found) != 1:
        raise SciqaError(f"run '{run_id}' has {'no' if not found else len(found)} per-row score file(s) "
                         f"(metrics/*_rows.csv); make them with `sciqa evaluate --run {run_id}`")
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=found[0], dst_path=tmp)
        return pd.read_csv(path, dtype={"id": str}, keep_default_na=False,
                           na_values={k: [""] for k in (*EXPLANATION, "answer_index")})


def row_rates(frame: pd.DataFrame) -> dict[str, float]:
    """% of empty explanations and % of answers mapped by a fuzzy parse rule (NaN where not recorded)."""
    def share(column: str, test: Callable) -> float:
        return 100.0 * float(test(frame[column].fillna("").astype(str)).mean()) if column in frame else np.nan

    return {"empty_explanation_rate": share("prediction", lambda s: s.str.strip().eq("")),
            "fuzzy_mapped_rate": share("rule", lambda s: s.isin(FUZZY_RULES))}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def delta_metrics(deltas: pd.DataFrame) -> dict[str, float]:
    """The differences as parent-run metrics (``d_acc_pkv_kd_vs_pkv_golden`` and its CI and p)."""
    out = {}
    for r in deltas.itertuples():
        name = f"d_{r.metric}_{slug(r.run)}_vs_{slug(r.baseline)}"
        out.update({name: r.diff, f"{name}_ci_low": r.ci_low, f"{name}_ci_high": r.ci_high})
        out.update({f"{name}_{k}": v for k, v in (("p", r.p_value), ("p_holm", r.p_holm)) if pd.notna(v)})
    return out


def log_report(files: dict[str, pd.DataFrame | str], plots: dict[str, Callable[[Path], Path]], folder: str = "compare",
               run_id: str = "") -> None:
    """``<folder>/<name>`` (a frame as CSV, else text) and ``plots/<name>`` on run ``run_id`` (default: the active)."""
    with tempfile.TemporaryDirectory() as tmp:
        for sub in (folder, "plots"):
            (Path(tmp) / sub).mkdir()
        for name, content in files.items():
            path = Path(tmp) / folder / name
            frame = isinstance(content, pd.DataFrame)
            content.to_csv(path, index=False) if frame else path.write_text(content, encoding="utf-8")
        for name, draw in plots.items():
            draw(Path(tmp) / "plots" / name)
        MlflowClient().log_artifacts(run_id or mlflow.active_run().info.run_id, tmp)


def run_fields(run_id: str) -> dict[str, str]:
    """What a compared run was scored with (its params; a score run's adapter is its adapter run)."""
    run = tracking.get_run(run_id)  # or one line: no such run
    p, tags = run.data.params, run.data.tags
    return {"run": run.info.run_name or "run", "step": tags.get("sciqa.step", ""),
            **{k: p.get(k, tags.get(f"sciqa.{k}", "")) for k in ("split", "setting", "model")},
            **{k: p.get(k, "") for k in ("answer_mode", "choice_score", "max_new_tokens", "data_digest")},
            "adapter": p.get("adapter_run", p.get("adapter", "")) or "none"}


def parse_arms(specs: list[str]) -> list[list[str]]:
    """``A1,A2,A3`` -> one arm of three seed runs; a bare id -> an arm of one run."""
    arms = [arm for arm in ([r.strip() for r in spec.split(",") if r.strip()] for spec in specs) if arm]
    flat = [r for arm in arms for r in arm]
    if len(flat) != len(set(flat)):
        raise SciqaError(f"a run id is given twice: {next(r for r in flat if flat.count(r) > 1)}")
    return arms


def arm_labels(arms: list[list[str]], fields: dict[str, dict]) -> tuple[dict[str, str], list[str]]:
    """(arm key -> a label telling the arms apart, the fields worth a warning); seed runs differ in their adapter."""
    between = [f for f in RUN_FIELDS if len({fields[arm[0]][f] for arm in arms}) > 1]
    within = [f for f in RUN_FIELDS if f != "adapter" and any(len({fields[r][f] for r in arm}) > 1 for arm in arms)]
    labels = {}
    for arm in arms:
        first = fields[arm[0]]
        extra = ", ".join(f"{f}={first[f][:8]}" for f in between if f != "data_digest")
        seeds = f" +{len(arm) - 1} seed runs" if len(arm) > 1 else ""
        labels[",".join(arm)] = f"{first['run']}{f' [{extra}]' if extra else ''} ({arm[0][:8]}{seeds})"
    return labels, list(dict.fromkeys([*between, *within]))


def _summary(arms: list[list[str]], labels: dict, baseline: str, table: pd.DataFrame, rows: dict) -> str:
    """The line above ``sciqa compare``'s tables: what was compared on how many problems."""
    n_common = int(table["n"].max()) if len(table) else 0
    missing = {r[:8]: len(f) - n_common for r, f in rows.items() if len(f) != n_common}
    primary, exploratory = n_tests(table)
    return (f"{len(arms) - 1} arm(s) vs {labels[baseline]} on n = {n_common} common problems"
            + (f"; ids missing elsewhere (left out): {missing}" if missing else "")
            + f". Primary: each arm's accuracy vs the baseline ({primary} tests, Holm; * = p_holm < 0.05); "
              f"{exploratory} exploratory tests. "
            + ("One seed run per arm: intervals cover the sampling of problems only, not training variance."
               if max(len(a) for a in arms) == 1 else "Seed runs of an arm are replicates (mean over seeds)."))


def compare_command(run_ids: list[str], baseline: str = "", by_group: bool = True,
                    parent_run_id: str | None = None, attach: str | None = None) -> tuple[str, str]:
    """``sciqa compare``, logged as a ``compare`` run: (its id, the terminal text)."""
    arms = parse_arms(run_ids)
    keys = [",".join(arm) for arm in arms]
    baseline = ",".join(parse_arms([baseline])[0]) if baseline else (keys[0] if keys else "")
    if len(arms) < 2 or baseline not in keys:
        raise SciqaError("give at least two run ids (an arm of seed runs as A1,A2,A3), and --baseline one of "
                         "them as given (default: the first)")
    tracking.connect()
    runs = [r for arm in arms for r in arm]
    fields = {r: run_fields(r) for r in runs}
    labels, differ = arm_labels(arms, fields)
    rows = {r: run_rows(r) for r in runs}
    try:
        table = compare_runs({k: [rows[r] for r in arm] for k, arm in zip(keys, arms)}, baseline, by_group=by_group)
    except ValueError as exc:
        raise SciqaError(f"cannot compare these runs: {exc}") from None
    for f in differ:
        print(f"sciqa: warning: the compared runs differ in {f}: "
              + ", ".join(f"{r[:8]} {fields[r][f] or '-'}" for r in runs), file=sys.stderr)
    info = pd.DataFrame([{"arm": labels[k], "run id": r[:8], **{f: fields[r][f] for f in RUN_FIELDS},
                          **{k2: f"{v:.1f}" if v == v else "" for k2, v in row_rates(rows[r]).items()}}
                         for k, arm in zip(keys, arms) for r in arm])
    head = _summary(arms, labels, baseline, table, rows)
    text = (f"{head}\n\n{info.to_markdown(index=False, tablefmt='simple', disable_numparse=True)}\n\n"
            f"{to_text(table, labels)}\n")
    tracking.setup()
    inputs = {r: digest(rows[r].to_csv(index=False)) for r in runs}  # a re-evaluated input: a new compare run
    params = {"runs": " ".join(keys), "baseline": baseline, "by_group": by_group, "rows_digest": digest(inputs)}
    tags = {"sciqa.compared_runs": ",".join(runs), "sciqa.compared_arms": " ".join(keys),
            "sciqa.baseline_run": baseline}
    with step_run("compare", params, tags, f"compare-{len(arms)}-arms", parent_run_id=parent_run_id,
                  attach=attach) as run:
        if run.reused:
            print(f"compare: reusing finished run {run.run_id}")
            return run.run_id, text
        markdown = (f"{head} Method: {METHOD}.\n\n{YARDSTICKS}\n\n{info.to_markdown(index=False)}\n\n"
                    f"{to_markdown(table, labels)}\n{READING}\n")
        named = table.assign(run_label=table["run"].map(labels), baseline_label=table["baseline"].map(labels))
        log_report({"comparison.csv": named, "runs.csv": info, "comparison.md": markdown},
                    {"deltas.png": lambda p: forest_plot(table, p, labels)})
        short = {k: arm[0][:8] for k, arm in zip(keys, arms)}
        everything = table[table["group"] == "all"]
        mlflow.log_metrics(delta_metrics(everything.assign(run=everything["run"].map(short),
                                                           baseline=everything["baseline"].map(short))))
    return run.run_id, text
