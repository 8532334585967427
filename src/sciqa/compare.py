"""KD vs golden (and every adapter vs the untuned base) with paired statistics, from MLflow alone.

Every scored run logged its per-row scores (``metrics/<stem>_rows.csv``); they are joined by
problem id (only ids in both runs count, n is shown) and compared with :mod:`sciqa.stats`:
accuracy difference with a 95 % paired bootstrap CI and an exact McNemar p-value, each
explanation metric with a paired bootstrap CI. With several seeds, the table shows mean ± sd
over seeds and the paired tests use the per-problem majority (accuracy; a tie counts as wrong)
and mean (explanation metrics). The comparison is logged to the active (parent) run under
``compare/`` and ``plots/`` and as ``d_<metric>_<run>_vs_<baseline>`` metrics.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np

from sciqa.errors import SciqaError
from sciqa.metrics import BY_NAME, EXPLANATION, LABELS, names

SHOWN = names(headline=True)  # the runs table's metric columns
BARS = tuple(name for name in SHOWN if BY_NAME[name].group != "rate")  # the bar plot's groups
TEACHER_COUNTS = ["teacher_rows_truncated", "teacher_rows_unmapped", "teacher_rows_wrong"]
COST = {"wall_seconds": "wall_seconds", "gpu_hours": "gpu_hours", "cost_usd": "api_cost"}  # column: step metric
READING = (
    "How to read it: each difference is the run minus its baseline on the same problems (n). The "
    "95 % interval is a paired bootstrap over problems; an interval that crosses zero means the data "
    "cannot tell the two apart at that level, whatever the point estimate says. For accuracy, p is "
    "McNemar's exact test on the problems the two runs answer differently. Scores come from the "
    "evaluation split, the common yardstick; val_loss_golden (training) is on golden targets and "
    "favours golden training by construction, so it is not compared here.")


def run_rows(run_id: str):
    """A run's per-row scores (``metrics/*_rows.csv``), or one line naming the command that makes them."""
    import mlflow
    import pandas as pd

    names = [a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="metrics")
             if a.path.endswith("_rows.csv")]
    if len(names) != 1:
        raise SciqaError(f"run '{run_id}' has {'no' if not names else len(names)} per-row score file(s) "
                         f"(metrics/*_rows.csv); make them with `sciqa evaluate --run {run_id}`")
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=names[0], dst_path=tmp)
        return pd.read_csv(path, dtype={"id": str}, keep_default_na=False, na_values={
            k: [""] for k in (*EXPLANATION, "answer_index")})


def pooled(frames: list):
    """One frame per problem over seeds: majority correctness (ties wrong), mean explanation metrics."""
    from sciqa.stats import join_rows

    if len(frames) == 1:
        return frames[0]
    joined = list(join_rows({str(i): f for i, f in enumerate(frames)}).frames.values())
    out = joined[0].copy()
    out["correct"] = np.mean([f["correct"].astype(bool).to_numpy() for f in joined], axis=0) > 0.5
    for name in EXPLANATION:
        out[name] = np.nanmean([f[name].to_numpy(dtype=float) for f in joined], axis=0) \
            if all(name in f for f in joined) else np.nan
    return out


def _label(variant: str, kd: bool) -> str:
    return f"{variant} {'kd' if kd else 'golden'}"


def runs_table(base: str, trained: dict, scored: dict, teacher_run: str, answer_mode: str,
               teacher_answer_mode: str = ""):
    """One row per (variant, target) over seeds, plus the base model and the teacher."""
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient()

    def metrics(run_id: str) -> dict:
        return client.get_run(run_id).data.metrics if run_id else {}

    rows = [{"model": "teacher (train split)", "answer_mode": teacher_answer_mode, "runs": teacher_run, **{
        k: metrics(teacher_run).get(k) for k in SHOWN}, **runs_cost([teacher_run])}] if teacher_run else []
    rows.append({"model": "base", "answer_mode": answer_mode, "runs": base, **{k: metrics(base).get(k) for k in SHOWN},
                 **runs_cost([base])})
    for variant, kd in dict.fromkeys((v, k) for v, k, _ in scored):
        seeds = sorted(s for v, k, s in scored if (v, k) == (variant, kd))
        per_seed = [metrics(scored[(variant, kd, s)]) for s in seeds]
        train = metrics(trained[(variant, kd, seeds[0])])
        params = client.get_run(trained[(variant, kd, seeds[0])]).data.params
        row = {"model": _label(variant, kd), "answer_mode": answer_mode, "seeds": len(seeds),
               "train_examples": params.get("train_examples"), "train_ids": params.get("train_ids_digest"),
               **{k: float(np.mean([m.get(k, np.nan) for m in per_seed])) for k in SHOWN},
               **({k: train.get(k) for k in TEACHER_COUNTS} if kd else {}),
               # the adapter's trainings and scores, and for KD the teacher it learned from
               **runs_cost([*(trained[(variant, kd, s)] for s in seeds), *(scored[(variant, kd, s)] for s in seeds),
                            teacher_run if kd else ""]),
               "runs": " ".join(scored[(variant, kd, s)] for s in seeds)}
        if len(seeds) > 1:
            row["acc_sd"] = float(np.std([m.get("acc", np.nan) for m in per_seed], ddof=1))
        rows.append(row)
    return pd.DataFrame(rows)


def deltas_table(base: str, scored: dict):
    """Per variant: KD − golden, and golden − base, KD − base (paired, on common problems)."""
    import pandas as pd

    from sciqa.stats import compare_runs

    frames = {"base": run_rows(base)}
    for variant, kd in dict.fromkeys((v, k) for v, k, _ in scored):
        frames[_label(variant, kd)] = pooled([run_rows(r) for (v, k, _), r in sorted(scored.items())
                                               if (v, k) == (variant, kd)])
    parts = []
    for variant in dict.fromkeys(v for v, _, _ in scored):
        golden, kd = _label(variant, False), _label(variant, True)
        parts.append(compare_runs({golden: frames[golden], kd: frames[kd]}, golden, by_group=False))
        parts.append(compare_runs({"base": frames["base"], golden: frames[golden], kd: frames[kd]}, "base",
                                  by_group=False))
    return pd.concat(parts, ignore_index=True)


def runs_cost(run_ids) -> dict[str, float]:
    """What runs cost together, each counted once: wall time, GPU hours (Slurm jobs), API cost
    (openai backend); per adapter (its trainings, scores and, for KD, its teacher) and for ``main``."""
    from mlflow import MlflowClient

    client = MlflowClient()
    ms = [client.get_run(r).data.metrics for r in run_ids if r]
    return {out: sum(m.get(key, 0.0) for m in ms) for out, key in COST.items()}


PHASES = ("load", "generate", "train", "evaluate", "log")


def time_table(run_ids):
    """Where an experiment's wall time went: one row per step run, its phases (``time_<phase>_seconds``)."""
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient()
    rows = []
    for run_id in dict.fromkeys(r for r in run_ids if r):
        run = client.get_run(run_id)
        m = run.data.metrics
        rows.append({"run": run.info.run_name, "step": run.data.tags.get("sciqa.step", ""),
                     "wall_seconds": m.get("wall_seconds"),
                     **{p: m.get(f"time_{p}_seconds") for p in PHASES}, "run_id": run_id})
    return pd.DataFrame(rows)


def runs_markdown(runs) -> str:
    """The runs table for people: counts as integers, metrics with 3 decimals, blanks where a column
    does not apply."""
    counts = {"seeds", "train_examples", "wall_seconds", *TEACHER_COUNTS}

    def cell(col: str, value) -> str:
        if value is None or value != value:
            return ""
        if isinstance(value, str):
            return value
        return str(int(value)) if col in counts else f"{value:.3f}"

    shown = runs.drop(columns=["runs", "train_ids"], errors="ignore")
    return shown.apply(lambda col: [cell(col.name, v) for v in col]).to_markdown(index=False, disable_numparse=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def delta_metrics(deltas) -> dict[str, float]:
    """The differences as parent-run metrics (``d_acc_pkv_kd_vs_pkv_golden`` and its CI and p)."""
    out = {}
    for r in deltas.itertuples():
        name = f"d_{r.metric}_{_slug(r.run)}_vs_{_slug(r.baseline)}"
        out.update({name: r.diff, f"{name}_ci_low": r.ci_low, f"{name}_ci_high": r.ci_high})
        if r.p_value == r.p_value and r.p_value is not None:
            out[f"{name}_p"] = r.p_value
    return out


def plot_losses(trained: dict, path: Path) -> Path:
    """Train loss (each on its own targets) and golden validation loss per epoch, KD vs golden, one
    panel per variant (first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow import MlflowClient

    client = MlflowClient()
    first = min(s for _, _, s in trained)
    variants = list(dict.fromkeys(v for v, _, _ in trained))
    fig, axes = plt.subplots(1, len(variants), figsize=(5 * len(variants), 3.8), sharey=True, squeeze=False)
    for ax, variant in zip(axes[0], variants):
        for kd, color in ((False, "tab:blue"), (True, "tab:orange")):
            run_id = trained[(variant, kd, first)]
            for metric, style in (("train_loss", "-"), ("val_loss_golden", "--")):
                hist = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)
                ax.plot([m.step for m in hist], [m.value for m in hist], style, color=color, marker="o",
                        label=f"{'KD' if kd else 'golden'} {metric.replace('_', ' ')}")
        ax.set_title(variant)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("cross-entropy (supervised tokens)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare(base: str, trained: dict, scored: dict, teacher_run: str, cfg) -> str:
    """Build, log (to the active parent run) and return as markdown the KD vs golden comparison;
    ``teacher_run`` holds the teacher's outputs evaluated on train (its benchmark, or a CSV's evaluate run)."""
    import mlflow

    from sciqa.stats import N_RESAMPLES, SEED, forest_plot, to_markdown

    runs = runs_table(base, trained, scored, teacher_run, cfg.answer_mode, cfg.teacher_answer_mode)
    deltas = deltas_table(base, scored)
    n = int(deltas["n"].max()) if len(deltas) else 0
    head = (f"KD vs golden on {cfg.eval_split} ({cfg.dataset}, {cfg.setting}), n = {n} problems, answer mode "
            f"'{cfg.answer_mode}', seeds {cfg.seeds}; teacher: {cfg.teacher_csv or teacher_run}; golden trained on "
            f"{'the same problems as KD' if cfg.golden_on == 'same' else 'all train problems'}; "
            f"bootstrap {N_RESAMPLES} resamples, seed {SEED}.")
    times = time_table([teacher_run, base, *trained.values(), *scored.values()])
    markdown = "\n\n".join([head, runs_markdown(runs), to_markdown(deltas), READING, "Where the time went "
                            "(seconds; a reused step shows the time it took when it ran):",
                            times.drop(columns=["run_id"]).to_markdown(index=False, floatfmt=".1f",
                                                                       missingval="")])
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        runs.to_csv(d / "runs.csv", index=False)
        deltas.to_csv(d / "comparison.csv", index=False)
        times.to_csv(d / "time.csv", index=False)
        (d / "comparison.md").write_text(markdown + "\n")
        mlflow.log_artifacts(tmp, "compare")
        plots = [plot_losses(trained, d / "loss_curves.png"), plot_metrics(runs, d / "metrics.png")]
        if len(deltas):
            plots.append(forest_plot(deltas, d / "deltas.png"))
        for plot in plots:
            mlflow.log_artifact(str(plot), "plots")
    children = {r for cell in runs["runs"] for r in str(cell).split()} | set(trained.values())
    totals = {f"{k}_total": v for k, v in runs_cost(children).items()}
    mlflow.log_metrics({**delta_metrics(deltas), **totals, **{f"acc_{_slug(r.model)}": r.acc
                                                               for r in runs.itertuples() if r.acc == r.acc}})
    return markdown


def plot_metrics(table, path: Path) -> Path:
    """Grouped bars of the headline metrics per row of the runs table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(table["model"])
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels) * len(BARS) / 3), 4))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        values = [np.nan_to_num(float(table.iloc[i][k] if table.iloc[i][k] is not None else np.nan))
                  * (1 if BY_NAME[k].scale == "points" else 100) for k in BARS]
        ax.bar([j + i * width for j in range(len(BARS))], values,
               width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(BARS))],
                  [LABELS[k] + ("" if BY_NAME[k].scale == "points" else " x100") for k in BARS])
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _labels(run_ids: list[str]) -> dict[str, str]:
    """Readable, unique labels: the run name and the id's first 8 characters."""
    from mlflow import MlflowClient

    client = MlflowClient()
    return {r: f"{client.get_run(r).info.run_name or 'run'} ({r[:8]})" for r in run_ids}


def compare_command(run_ids: list[str], baseline: str = "", by_group: bool = True,
                    parent_run_id: str | None = None) -> tuple[str, str]:
    """``sciqa compare``: paired statistics of any evaluated runs against a baseline, logged as a
    ``compare`` run; returns (its id, the plain-text table)."""
    import mlflow

    from sciqa import tracking
    from sciqa.stats import N_RESAMPLES, SEED, compare_runs, forest_plot, to_markdown, to_text
    from sciqa.tracking import step_run

    run_ids = list(dict.fromkeys(run_ids))
    baseline = baseline or (run_ids[0] if run_ids else "")
    if len(run_ids) < 2 or baseline not in run_ids:
        raise SciqaError("give at least two run ids, and --baseline one of them (default: the first)")
    tracking.connect()
    for r in run_ids:
        tracking.get_run(r)
    frames = {r: run_rows(r) for r in run_ids}
    try:
        table = compare_runs(frames, baseline, by_group=by_group)
    except ValueError as exc:
        raise SciqaError(f"cannot compare these runs: {exc} (different datasets or splits?)") from None
    labels = _labels(run_ids)
    n_common = int(table["n"].max()) if len(table) else 0
    missing = {labels[r]: len(f) - n_common for r, f in frames.items() if len(f) != n_common}
    head = (f"{len(run_ids) - 1} run(s) vs {labels[baseline]} on n = {n_common} common problems"
            + (f"; ids missing elsewhere: {missing}" if missing else "") + f"; bootstrap {N_RESAMPLES}, seed {SEED}.")
    text = f"{head}\n\n{to_text(table, labels)}\n"
    tracking.setup()
    params = {"runs": ",".join(run_ids), "baseline": baseline, "by_group": by_group}
    tags = {"sciqa.compared_runs": ",".join(run_ids), "sciqa.baseline_run": baseline}
    with step_run("compare", params, tags, f"compare-{len(run_ids)}-runs", parent_run_id=parent_run_id) as run:
        if run.reused:
            print(f"compare: reusing finished run {run.run_id}")
            return run.run_id, text
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            table.to_csv(d / "comparison.csv", index=False)
            (d / "comparison.md").write_text(f"{head}\n\n{to_markdown(table, labels)}\n{READING}\n")
            mlflow.log_artifacts(tmp, "compare")
            mlflow.log_artifact(str(forest_plot(table, d / "deltas.png", labels)), "plots")
        mlflow.log_metrics(delta_metrics(table[table["group"] == "all"].assign(
            run=[r[:8] for r in table[table["group"] == "all"]["run"]],
            baseline=[r[:8] for r in table[table["group"] == "all"]["baseline"]])))
    return run.run_id, text
