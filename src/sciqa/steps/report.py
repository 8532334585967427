"""``main``'s report: KD vs golden per variant (and every adapter vs the base), seeds as replicates, on the
active parent run: ``compare/`` (runs, comparison, time tables and comparison.md), ``plots/``, ``d_*`` metrics."""
import contextlib
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient

from sciqa.errors import SciqaError
from sciqa.eval.metrics import BY_NAME, LABELS, names
from sciqa.eval.parsing import FUZZY_RULES
from sciqa.eval.stats import METHOD, decide, forest_plot, n_tests, to_markdown, to_text
from sciqa.steps.compare import READING, YARDSTICKS, delta_metrics, log_report, paired, row_rates, run_rows, slug, to_md

SHOWN = names(headline=True)  # the runs table's metric columns
BARS = tuple(name for name in SHOWN if BY_NAME[name].group != "rate")  # the bar plot's groups
TEACHER_COUNTS = [f"teacher_rows_{k}" for k in ("truncated", "unmapped", "wrong", "empty_explanation")]
COUNTS = {"seeds", "train_examples", "wall_seconds", *TEACHER_COUNTS}  # as integers; other numbers: 3 decimals
COST = {"wall_seconds": "wall_seconds", "gpu_hours": "gpu_hours", "cost_usd": "api_cost"}  # column: step metric
PHASES = ("load", "generate", "train", "evaluate", "log")
TEACHER = "teacher (train split)"


def _label(variant: str, kd: bool) -> str:
    return f"{variant} {'kd' if kd else 'golden'}"


def _arms(keys) -> dict[str, list[tuple]]:
    """Arm label -> its (variant, kd, seed) keys in seed order; the arms in the order ``main`` trained them."""
    arms: dict[str, list] = {}
    for key in sorted(keys, key=lambda k: k[2]):
        arms.setdefault(_label(*key[:2]), []).append(key)
    return arms


def _metrics(run_id: str) -> dict:
    return MlflowClient().get_run(run_id).data.metrics if run_id else {}


def runs_cost(run_ids) -> dict[str, float]:
    """What runs cost together, each counted once: wall time, GPU hours, API cost."""
    ms = [_metrics(r) for r in dict.fromkeys(r for r in run_ids if r)]
    return {out: sum(m.get(key, 0.0) for m in ms) for out, key in COST.items()}


def _row(model: str, split: str, answer_mode: str, scores: list[str], rows: dict, cost: list[str]) -> dict:
    """A runs-table row of the seed runs ``scores``: metric means, rate means, cost (of ``cost``)."""
    per_seed = [_metrics(r) for r in scores]
    rates = [row_rates(rows[r]) for r in scores if r in rows]
    return {"model": model, "split": split, "answer_mode": answer_mode, "runs": " ".join(scores),
            **{k: float(np.mean([m.get(k, np.nan) for m in per_seed])) for k in SHOWN},
            **({k: float(np.mean([r[k] for r in rates])) for k in rates[0]} if rates else {}), **runs_cost(cost)}


def runs_table(base: str, trained: dict, scored: dict, teacher_run: str, cfg, rows: dict) -> pd.DataFrame:
    """One row per (variant, target), seeds averaged, plus the base model and the teacher (on train)."""
    out = [_row(TEACHER, "train", cfg.teacher_answer_mode, [teacher_run], rows, [teacher_run])] if teacher_run else []
    out.append(_row("base", "eval", cfg.answer_mode, [base], rows, [base]))
    for label, keys in _arms(scored).items():
        scores, trains, kd = [scored[k] for k in keys], [trained[k] for k in keys], keys[0][1]
        cost = [*trains, *scores, teacher_run if kd else ""]  # for KD, the teacher it learned from
        row = _row(label, "eval", cfg.answer_mode, scores, rows, cost)
        params, train = MlflowClient().get_run(trains[0]).data.params, _metrics(trains[0])
        row.update(seeds=len(keys), train_examples=params.get("train_examples"), train_ids=params.get(
            "train_ids_digest"), **({k: train.get(k) for k in TEACHER_COUNTS} if kd else {}))
        if len(keys) > 1:
            row["acc_sd"] = float(np.std([_metrics(r).get("acc", np.nan) for r in scores], ddof=1))
        out.append(row)
    return pd.DataFrame(out)


def deltas_table(base: str, scored: dict, rows: dict) -> pd.DataFrame:
    """Per variant: KD − golden (primary), golden − base and KD − base (exploratory); Holm over variants."""
    arms = {"base": [rows[base]], **{label: [rows[scored[k]] for k in keys] for label, keys in _arms(scored).items()}}
    what, parts = "the runs of this experiment", []
    for variant in dict.fromkeys(v for v, _, _ in scored):
        golden, kd = _label(variant, False), _label(variant, True)
        parts += [paired({golden: arms[golden], kd: arms[kd]}, golden, what, by_group=False),
                  paired({"base": arms["base"], golden: arms[golden], kd: arms[kd]}, "base", what, by_group=False,
                         primary=False)]
    return decide(pd.concat(parts, ignore_index=True))


def time_table(run_ids) -> pd.DataFrame:
    """Where an experiment's wall time went: one row per step run, its phases (``time_<phase>_seconds``)."""
    runs = [MlflowClient().get_run(r) for r in dict.fromkeys(r for r in run_ids if r)]
    return pd.DataFrame([{"run": r.info.run_name, "step": r.data.tags.get("sciqa.step", ""),
                          "wall_seconds": r.data.metrics.get("wall_seconds"),
                          **{p: r.data.metrics.get(f"time_{p}_seconds") for p in PHASES}, "run_id": r.info.run_id}
                         for r in runs])


def plot_losses(panels: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> Path:
    """Loss per epoch, one panel per title (label -> (epoch, loss) points): a training run's and ``main``'s."""
    fig = Figure(figsize=(5 * len(panels), 3.8), layout="tight")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (title, curves) in zip(axes, panels.items()):
        for label, points in curves.items():
            ax.plot(*zip(*sorted(points)), "--" if "val" in label else "-", marker="o", label=label)
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("token-mean cross-entropy (supervised tokens)")
    axes[-1].legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _loss_panels(trained: dict) -> dict:
    """Train loss (own targets) and golden validation loss, KD vs golden, per variant (first seed)."""
    first = min(s for _, _, s in trained)
    return {variant: {f"{'KD' if kd else 'golden'} {metric.replace('_', ' ')}": [
        (m.step, m.value) for m in MlflowClient().get_metric_history(trained[variant, kd, first], metric)]
        for kd in (False, True) for metric in ("train_loss", "val_loss_golden")}
        for variant in dict.fromkeys(v for v, _, _ in trained)}


def plot_metrics(table: pd.DataFrame, path: Path) -> Path:
    """Grouped bars of the headline metrics per evaluation-split row (not the teacher's, scored on train)."""
    table = table[table["split"] != "train"]
    scale = {k: 1 if BY_NAME[k].scale == "points" else 100 for k in BARS}
    bars = table.set_index("model")[list(BARS)].astype(float).fillna(0.0).mul(scale)
    bars.columns = [LABELS[k] + ("" if scale[k] == 1 else " x100") for k in BARS]
    fig = Figure(figsize=(max(6, 1.3 * len(table) * len(BARS) / 3), 4), layout="tight")
    bars.T.plot.bar(ax=fig.subplots(), rot=0, width=0.8).legend(fontsize=8)
    fig.axes[0].grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    return path


def check_same_problems(trained: dict, golden_on: str) -> dict[str, tuple[str, str]]:
    """(variant seed) -> (golden's, KD's) ``train_ids_digest``; unless golden_on=all, a pair that differs is refused."""
    digests = {f"{v} seed {s}": tuple(MlflowClient().get_run(trained[v, k, s]).data.params.get("train_ids_digest", "")
                                      for k in (False, True)) for v, kd, s in sorted(trained) if not kd}
    for arm, (golden, kd) in digests.items():
        if golden != kd and golden_on != "all":
            raise SciqaError(f"{arm}: golden and KD trained on different problems (train_ids_digest {golden} vs {kd}) "
                             f"although golden_on={golden_on}; rerun with --force true, or ask for golden_on=all to "
                             "compare them anyway")
    return digests


def _teacher_words(cfg, teacher_run: str) -> str:
    if cfg.teacher_csv:
        return f"CSV {cfg.teacher_csv} (its rows for train problems, evaluated on train)"
    params = MlflowClient().get_run(teacher_run).data.params if teacher_run else {}
    return (f"{params.get('model', cfg.teacher_model)} (run {teacher_run[:8]}), setting {params.get('setting', '?')}"
            f" on split {params.get('split', 'train')}, answer mode {params.get('answer_mode', '?')}")


def _rates_words(runs: pd.DataFrame, column: str) -> str:
    shown = [f"{m} {v:.1f}" for m, v in zip(runs["model"], runs.get(column, [np.nan] * len(runs))) if v == v]
    return ", ".join(shown) if shown else "not recorded"


def headers(cfg, runs: pd.DataFrame, deltas: pd.DataFrame, teacher: str, dropped: dict, digests: dict,
            kd_empty: dict) -> tuple[str, str]:
    """(the markdown header of comparison.md, the few terminal lines above the table)."""
    n = int(deltas["n"].max()) if len(deltas) else 0
    primary, exploratory = n_tests(deltas)
    seeds = [s.strip() for s in str(cfg.seeds).split(",") if s.strip()]
    one_seed = ("one seed: the intervals cover the sampling of problems only, not training variance"
                if len(seeds) == 1 else f"{len(seeds)} seeds per arm as replicates (mean over seeds; the "
                "intervals add the seed-to-seed variance)")
    acc = runs.loc[runs["model"] == TEACHER, "acc"]
    teacher += f", accuracy {acc.iloc[0]:.1f} % on train" if len(acc) and pd.notna(acc.iloc[0]) else ""
    golden = ("golden_on=same: golden trained on exactly KD's problems (after every KD filter), checked: "
              "equal train_ids_digest per seed" if cfg.golden_on != "all" else
              "golden_on=all: golden trained on all train problems, KD on the teacher's usable ones, so the arms "
              "differ in their problems as well as their targets" + (
                  "" if all(a == b for a, b in digests.values()) else " (train_ids_digest differ)"))
    kd_filter = ("kd_filter=correct: KD rows were filtered with the gold labels (only the teacher's correct "
                 "answers kept)" if cfg.kd_filter == "correct" else "kd_filter=all: every usable teacher row kept")
    empty_kd = ", ".join(f"{k} {v:.0f}" for k, v in kd_empty.items() if v == v)
    setting = (f"KD vs golden on {cfg.eval_split} ({cfg.dataset}, setting {cfg.setting}), n = {n} problems; "
               f"answer mode {cfg.answer_mode}, choice score {cfg.choice_score}, max_new_tokens {cfg.max_new_tokens}; "
               f"{kd_filter.split(':')[0]}, golden_on={cfg.golden_on}; seeds {','.join(seeds)}.")
    markdown = "\n".join([
        setting, "",
        f"- Teacher: {teacher}. Its row is scored on the train split (its own answers there), not on "
        f"{cfg.eval_split}: not comparable with the other rows, and not drawn among the bars of plots/metrics.png.",
        f"- {golden}.", f"- {kd_filter}. KD targets with an empty explanation: {empty_kd or 'not counted'} (kept: "
        "the answer still teaches).",
        f"- Primary endpoint: KD \u2212 golden accuracy on {cfg.eval_split}, one per variant: {primary} test(s), "
        f"Holm-adjusted (p_holm; significant when p_holm < 0.05). Every other row is exploratory: {exploratory} "
        "test(s), unadjusted, for orientation only. Decisions use unrounded values; no minimum effect is applied.",
        f"- Method: {METHOD}; {one_seed}.", f"- {YARDSTICKS}",
        f"- Empty explanations (% of rows): {_rates_words(runs, 'empty_explanation_rate')}.",
        f"- Answers mapped by a fuzzy parse rule ({', '.join(sorted(FUZZY_RULES))}; % of rows): "
        f"{_rates_words(runs, 'fuzzy_mapped_rate')}.",
        f"- Ids dropped: by the join (missing from another run) {dropped or 'none'}; by KD's filters, per KD run: "
        "the teacher_rows_* columns of the runs table.",
        "- For a final claim use eval_split=test: validation is where learning rates were chosen."])
    terminal = "\n".join([
        setting, f"teacher {teacher}: scored on train, not comparable with the rows below.",
        f"empty explanations %: {_rates_words(runs[runs['split'] == 'eval'], 'empty_explanation_rate')}.",
        f"primary: KD \u2212 golden accuracy per variant ({primary} tests, Holm; * = p_holm < 0.05); the rest "
        f"({exploratory} tests) exploratory. {one_seed.capitalize()}."])
    return markdown, terminal


def compare(base: str, trained: dict, scored: dict, teacher_run: str, cfg) -> str:
    """``main``'s KD vs golden comparison, logged to the active parent run; returns the terminal text."""
    digests = check_same_problems(trained, cfg.golden_on)
    labels = {base: "base", **{r: f"{_label(v, k)} seed {s}" for (v, k, s), r in scored.items()}}
    rows = {r: run_rows(r) for r in labels}
    with contextlib.suppress(SciqaError):  # a teacher without per-row scores: no rates in its row
        rows[teacher_run] = run_rows(teacher_run)
    ids = {r: set(rows[r]["id"].astype(str)) for r in labels}
    common = set.intersection(*ids.values())
    dropped = {labels[r]: len(i) - len(common) for r, i in ids.items() if len(i) > len(common)}  # by the join
    runs = runs_table(base, trained, scored, teacher_run, cfg, rows)
    deltas = deltas_table(base, scored, rows)
    kd_empty = {f"{_label(v, True)} seed {s}": _metrics(r).get("teacher_rows_empty_explanation", np.nan)
                for (v, kd, s), r in sorted(trained.items()) if kd}
    head, terminal = headers(cfg, runs, deltas, _teacher_words(cfg, teacher_run), dropped, digests, kd_empty)
    times = time_table([teacher_run, base, *trained.values(), *scored.values()])
    shown = to_md(runs.drop(columns=["runs", "train_ids"], errors="ignore"), lambda c: 0 if c in COUNTS else 3)
    markdown = "\n\n".join([head, shown, to_markdown(deltas), READING, "Where the time went "
                            "(seconds; a reused step shows the time it took when it ran):",
                            times.drop(columns=["run_id"]).to_markdown(index=False, floatfmt=".1f", missingval="")])
    plots = {"loss_curves.png": lambda p: plot_losses(_loss_panels(trained), p),
             "metrics.png": lambda p: plot_metrics(runs, p)}
    log_report({"runs.csv": runs, "comparison.csv": deltas, "time.csv": times, "comparison.md": markdown + "\n"},
               {**plots, **({"deltas.png": lambda p: forest_plot(deltas, p)} if len(deltas) else {})})
    children = {r for cell in runs["runs"] for r in str(cell).split()} | set(trained.values())
    mlflow.log_metrics({**delta_metrics(deltas), **{f"{k}_total": v for k, v in runs_cost(children).items()},
                        **{f"acc_{slug(r.model)}": r.acc for r in runs.itertuples() if r.acc == r.acc}})
    run_id = mlflow.active_run().info.run_id if mlflow.active_run() else ""
    return (f"{terminal}\n\n{to_text(deltas)}\n\nthe full report (every metric, per-seed differences, how to read "
            f"it): compare/comparison.md on run {run_id}")
