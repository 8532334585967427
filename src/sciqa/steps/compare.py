"""KD vs golden (and every adapter vs the untuned base) with paired statistics, from MLflow alone.

Every scored run logged its per-row scores (``metrics/<stem>_rows.csv``); they are joined by
problem id (only ids in every run count, n is shown; a common id whose gold answer or reference
differs between runs is refused) and compared with :mod:`sciqa.eval.stats`. An arm is one run or the
seed runs of one adapter: seeds are replicates (the arm's value is the mean over seeds, in every
table), never majority-voted. KD − golden accuracy on the evaluation split is the primary endpoint
of each variant (Holm-adjusted over variants); every other difference is exploratory. The terminal
gets one table; the sentences, the full table and the header go to ``compare/comparison.md`` on the
active (parent) run, with ``compare/*.csv``, ``plots/`` and ``d_<metric>_<run>_vs_<baseline>`` metrics.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np

from sciqa.errors import SciqaError
from sciqa.eval.metrics import BY_NAME, EXPLANATION, LABELS, names

SHOWN = names(headline=True)  # the runs table's metric columns
BARS = tuple(name for name in SHOWN if BY_NAME[name].group != "rate")  # the bar plot's groups
TEACHER_COUNTS = ["teacher_rows_truncated", "teacher_rows_unmapped", "teacher_rows_wrong", "teacher_rows_empty_explanation"]
COST = {"wall_seconds": "wall_seconds", "gpu_hours": "gpu_hours", "cost_usd": "api_cost"}  # column: step metric
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
FUZZY_FALLBACK = frozenset({"prefix", "mention", "ordinal"})  # parsing.FUZZY_RULES where it is defined


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


def fuzzy_rules() -> frozenset:
    """The parse rules that read an answer rather than match it (``parsing.FUZZY_RULES``)."""
    from sciqa.eval import parsing

    return frozenset(getattr(parsing, "FUZZY_RULES", FUZZY_FALLBACK))


def row_rates(frame) -> dict[str, float]:
    """Per run, from its per-row scores: % of empty explanations, % of answers mapped by a fuzzy
    parse rule (NaN for rows written before the rule was recorded)."""
    empty = frame["prediction"].fillna("").astype(str).str.strip().eq("") if "prediction" in frame else None
    fuzzy = frame["rule"].fillna("").astype(str).isin(fuzzy_rules()) if "rule" in frame else None
    return {"empty_explanation_rate": np.nan if empty is None else 100.0 * float(empty.mean()),
            "fuzzy_mapped_rate": np.nan if fuzzy is None else 100.0 * float(fuzzy.mean())}


def _label(variant: str, kd: bool) -> str:
    return f"{variant} {'kd' if kd else 'golden'}"


def _mean_rates(frames: list) -> dict[str, float]:
    rates = [row_rates(f) for f in frames]
    return {k: float(np.mean([r[k] for r in rates])) for k in rates[0]} if rates else {}


def runs_table(base: str, trained: dict, scored: dict, teacher_run: str, answer_mode: str,
               teacher_answer_mode: str = "", rows: dict | None = None):
    """One row per (variant, target) over seeds (means: the arm's values), plus the base model and the
    teacher (scored on the train split); ``rows``: run id -> per-row scores, for the rates."""
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient()
    rows = rows or {}

    def metrics(run_id: str) -> dict:
        return client.get_run(run_id).data.metrics if run_id else {}

    def rates(run_ids) -> dict:
        return _mean_rates([rows[r] for r in run_ids if r in rows])

    out = [{"model": "teacher (train split)", "split": "train", "answer_mode": teacher_answer_mode, "runs": teacher_run,
            **{k: metrics(teacher_run).get(k) for k in SHOWN}, **rates([teacher_run]),
            **runs_cost([teacher_run])}] if teacher_run else []
    out.append({"model": "base", "split": "eval", "answer_mode": answer_mode, "runs": base,
                **{k: metrics(base).get(k) for k in SHOWN}, **rates([base]), **runs_cost([base])})
    for variant, kd in dict.fromkeys((v, k) for v, k, _ in scored):
        seeds = sorted(s for v, k, s in scored if (v, k) == (variant, kd))
        per_seed = [metrics(scored[(variant, kd, s)]) for s in seeds]
        train = metrics(trained[(variant, kd, seeds[0])])
        params = client.get_run(trained[(variant, kd, seeds[0])]).data.params
        row = {"model": _label(variant, kd), "split": "eval", "answer_mode": answer_mode, "seeds": len(seeds),
               "train_examples": params.get("train_examples"), "train_ids": params.get("train_ids_digest"),
               **{k: float(np.mean([m.get(k, np.nan) for m in per_seed])) for k in SHOWN},
               **rates([scored[(variant, kd, s)] for s in seeds]),
               **({k: train.get(k) for k in TEACHER_COUNTS} if kd else {}),
               # the adapter's trainings and scores, and for KD the teacher it learned from
               **runs_cost([*(trained[(variant, kd, s)] for s in seeds), *(scored[(variant, kd, s)] for s in seeds),
                            teacher_run if kd else ""]),
               "runs": " ".join(scored[(variant, kd, s)] for s in seeds)}
        if len(seeds) > 1:
            row["acc_sd"] = float(np.std([m.get("acc", np.nan) for m in per_seed], ddof=1))
        out.append(row)
    return pd.DataFrame(out)


def arms_of(scored: dict, rows: dict) -> dict[str, list]:
    """Arm label -> its seed runs' per-row scores, in seed order (seed s of golden and KD pair up)."""
    arms: dict[str, list] = {}
    for (variant, kd, _), run_id in sorted(scored.items()):
        arms.setdefault(_label(variant, kd), []).append(rows[run_id])
    return arms


def deltas_table(base: str, scored: dict, rows: dict):
    """Per variant: KD − golden (the primary endpoint), and golden − base, KD − base (exploratory);
    every arm's seeds as replicates, on the problems its comparison shares; Holm over variants."""
    import pandas as pd

    from sciqa.eval.stats import compare_runs, decide

    arms = {"base": [rows[base]], **arms_of(scored, rows)}
    parts = []
    try:
        for variant in dict.fromkeys(v for v, _, _ in scored):
            golden, kd = _label(variant, False), _label(variant, True)
            parts.append(compare_runs({golden: arms[golden], kd: arms[kd]}, golden, by_group=False))
            parts.append(compare_runs({"base": arms["base"], golden: arms[golden], kd: arms[kd]}, "base",
                                      by_group=False, primary=False))
    except ValueError as exc:
        raise SciqaError(f"cannot compare the runs of this experiment: {exc}") from None
    return decide(pd.concat(parts, ignore_index=True))


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
        if r.p_holm == r.p_holm and r.p_holm is not None:
            out[f"{name}_p_holm"] = r.p_holm
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


def check_same_problems(trained: dict, golden_on: str) -> dict[str, tuple[str, str]]:
    """(variant seed) -> (golden's, KD's) ``train_ids_digest``. Unless golden_on=all was asked for,
    a pair trained on different problems is refused: the comparison would mix problems and targets."""
    from mlflow import MlflowClient

    client = MlflowClient()
    digests = {}
    for (variant, kd, seed), run_id in sorted(trained.items()):
        if kd:
            continue
        pair = tuple(client.get_run(trained[(variant, k, seed)]).data.params.get("train_ids_digest", "")
                     for k in (False, True))
        digests[f"{variant} seed {seed}"] = pair
        if pair[0] != pair[1] and golden_on != "all":
            raise SciqaError(f"{variant} seed {seed}: golden and KD trained on different problems (train_ids_digest "
                             f"{pair[0]} vs {pair[1]}) although golden_on={golden_on}; rerun with --force true, or "
                             "ask for golden_on=all to compare them anyway")
    return digests


def _teacher_words(cfg, teacher_run: str) -> str:
    from mlflow import MlflowClient

    if cfg.teacher_csv:
        return f"CSV {cfg.teacher_csv} (its rows for train problems, evaluated on train)"
    params = MlflowClient().get_run(teacher_run).data.params if teacher_run else {}
    return (f"{params.get('model', cfg.teacher_model)} (run {teacher_run[:8]}), setting {params.get('setting', '?')} on "
            f"split {params.get('split', 'train')}, answer mode {params.get('answer_mode', '?')}")


def _rates_words(runs, column: str) -> str:
    shown = [f"{r.model} {getattr(r, column):.1f}" for r in runs.itertuples() if getattr(r, column) == getattr(r, column)]
    return ", ".join(shown) if shown else "not recorded"


def _dropped(rows: dict, labels: dict) -> dict[str, int]:
    """Per evaluation run: its ids missing from some other evaluation run (left out of every comparison)."""
    ids = {r: set(f["id"].astype(str)) for r, f in rows.items()}
    common = set.intersection(*ids.values())
    return {labels[r]: len(i) - len(common) for r, i in ids.items() if len(i) > len(common)}


def headers(cfg, runs, deltas, teacher_words: str, dropped: dict, digests: dict, kd_empty: dict) -> tuple[str, str]:
    """(markdown header for comparison.md, the few terminal lines above the table)."""
    from sciqa.eval.stats import METHOD, n_tests

    n = int(deltas["n"].max()) if len(deltas) else 0
    primary, exploratory = n_tests(deltas)
    seeds = [s.strip() for s in str(cfg.seeds).split(",") if s.strip()]
    one_seed = ("one seed: the intervals cover the sampling of problems only, not training variance"
                if len(seeds) == 1 else f"{len(seeds)} seeds per arm as replicates (mean over seeds; the "
                "intervals add the seed-to-seed variance)")
    teacher = runs[runs["model"] == "teacher (train split)"]
    teacher_acc = f", accuracy {teacher['acc'].iloc[0]:.1f} % on train" if len(teacher) and \
        teacher["acc"].iloc[0] == teacher["acc"].iloc[0] and teacher["acc"].iloc[0] is not None else ""
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
        f"- Teacher: {teacher_words}{teacher_acc}. Its row is scored on the train split (its own answers there), "
        f"not on {cfg.eval_split}: not comparable with the other rows, and not drawn among the bars of plots/metrics.png.",
        f"- {golden}.", f"- {kd_filter}. KD targets with an empty explanation: {empty_kd or 'not counted'} (kept: "
        "the answer still teaches).",
        f"- Primary endpoint: KD \u2212 golden accuracy on {cfg.eval_split}, one per variant: {primary} test(s), "
        f"Holm-adjusted (p_holm; significant when p_holm < 0.05). Every other row is exploratory: {exploratory} "
        "test(s), unadjusted, for orientation only. Decisions use unrounded values; no minimum effect is applied.",
        f"- Method: {METHOD}; {one_seed}.",
        f"- {YARDSTICKS}",
        f"- Empty explanations (% of rows): {_rates_words(runs, 'empty_explanation_rate')}.",
        f"- Answers mapped by a fuzzy parse rule ({', '.join(sorted(fuzzy_rules()))}; % of rows): "
        f"{_rates_words(runs, 'fuzzy_mapped_rate')}.",
        f"- Ids dropped: by the join (missing from another run) {dropped or 'none'}; by KD's filters, per KD run: "
        "the teacher_rows_* columns of the runs table.",
        "- For a final claim use eval_split=test: validation is where learning rates were chosen."])
    terminal = "\n".join([
        setting,
        f"teacher {teacher_words}{teacher_acc}: scored on train, not comparable with the rows below.",
        f"empty explanations %: {_rates_words(runs[runs['split'] == 'eval'], 'empty_explanation_rate')}.",
        f"primary: KD \u2212 golden accuracy per variant ({primary} tests, Holm; * = p_holm < 0.05); the rest "
        f"({exploratory} tests) exploratory. {one_seed.capitalize()}."])
    return markdown, terminal


def compare(base: str, trained: dict, scored: dict, teacher_run: str, cfg) -> str:
    """Build and log (to the active parent run) the KD vs golden comparison; returns the terminal text.
    ``teacher_run`` holds the teacher's outputs evaluated on train (its benchmark, or a CSV's evaluate run)."""
    import mlflow
    from mlflow import MlflowClient

    from sciqa.eval.stats import forest_plot, to_markdown, to_text

    digests = check_same_problems(trained, cfg.golden_on)
    rows = {r: run_rows(r) for r in dict.fromkeys([base, *scored.values()])}
    labels = {base: "base", **{r: f"{_label(v, k)} seed {s}" for (v, k, s), r in scored.items()}}
    dropped = _dropped(rows, labels)
    try:
        rows[teacher_run] = run_rows(teacher_run) if teacher_run else None
    except SciqaError:  # a teacher evaluated before per-row scores existed: no rates for it
        rows[teacher_run] = None
    rows = {r: f for r, f in rows.items() if f is not None}
    runs = runs_table(base, trained, scored, teacher_run, cfg.answer_mode, cfg.teacher_answer_mode, rows)
    deltas = deltas_table(base, scored, rows)
    client = MlflowClient()
    kd_empty = {_label(v, True) + f" seed {s}": client.get_run(r).data.metrics.get("teacher_rows_empty_explanation",
                                                                                   np.nan)
                for (v, kd, s), r in sorted(trained.items()) if kd}
    head, terminal = headers(cfg, runs, deltas, _teacher_words(cfg, teacher_run), dropped, digests, kd_empty)
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
    run_id = mlflow.active_run().info.run_id if mlflow.active_run() else ""
    return (f"{terminal}\n\n{to_text(deltas)}\n\nthe full report (every metric, per-seed differences, how to read "
            f"it): compare/comparison.md on run {run_id}")


def plot_metrics(table, path: Path) -> Path:
    """Grouped bars of the headline metrics per row of the runs table scored on the evaluation split
    (the teacher's row, scored on train, is not drawn among them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "split" in table:
        table = table[table["split"] != "train"].reset_index(drop=True)
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


RUN_FIELDS = ("split", "setting", "answer_mode", "choice_score", "max_new_tokens", "model", "adapter", "data_digest")


def run_fields(run_id: str) -> dict[str, str]:
    """What a compared run was scored with (its params; a score run's adapter is its adapter run)."""
    from mlflow import MlflowClient

    run = MlflowClient().get_run(run_id)
    p, tags = run.data.params, run.data.tags
    return {"run": run.info.run_name or "run", "step": tags.get("sciqa.step", ""),
            "split": p.get("split", tags.get("sciqa.split", "")), "setting": p.get("setting", tags.get("sciqa.setting", "")),
            "answer_mode": p.get("answer_mode", ""), "choice_score": p.get("choice_score", ""),
            "max_new_tokens": p.get("max_new_tokens", ""), "model": p.get("model", tags.get("sciqa.model", "")),
            "adapter": p.get("adapter_run", p.get("adapter", "")) or "none", "data_digest": p.get("data_digest", "")}


def parse_arms(specs: list[str]) -> list[list[str]]:
    """``A1,A2,A3`` -> one arm of three seed runs; a bare id -> an arm of one run."""
    arms = [[r.strip() for r in spec.split(",") if r.strip()] for spec in specs]
    arms = [arm for arm in arms if arm]
    flat = [r for arm in arms for r in arm]
    if len(flat) != len(set(flat)):
        raise SciqaError(f"a run id is given twice: {next(r for r in flat if flat.count(r) > 1)}")
    return arms


def arm_labels(arms: list[list[str]], fields: dict[str, dict]) -> tuple[dict[str, str], list[str]]:
    """(arm key -> a label that tells the arms apart, the fields worth a warning): the run name, the
    values of the fields on which the arms differ, the first id's first 8 characters (and the
    seed-run count). Seed runs of one arm differ in their adapter by design; in nothing else."""
    between = [f for f in RUN_FIELDS if len({fields[arm[0]][f] for arm in arms}) > 1]
    within = [f for f in RUN_FIELDS if f != "adapter" and any(len({fields[r][f] for r in arm}) > 1 for arm in arms)]
    labels = {}
    for arm in arms:
        first = fields[arm[0]]
        extra = [f"{f}={first[f][:8]}" for f in between if f != "data_digest"]
        seeds = f" +{len(arm) - 1} seed runs" if len(arm) > 1 else ""
        labels[",".join(arm)] = f"{first['run']}{' [' + ', '.join(extra) + ']' if extra else ''} ({arm[0][:8]}{seeds})"
    return labels, list(dict.fromkeys([*between, *within]))


def compare_command(run_ids: list[str], baseline: str = "", by_group: bool = True,
                    parent_run_id: str | None = None) -> tuple[str, str]:
    """``sciqa compare``: paired statistics of arms of evaluated runs (an arm: one run id, or the
    comma-joined ids of its seed runs) against a baseline arm, logged as a ``compare`` run; returns
    (its id, the terminal text)."""
    import sys

    import mlflow
    import pandas as pd

    from sciqa.eval.stats import METHOD, compare_runs, forest_plot, n_tests, to_markdown, to_text
    from sciqa.files import digest
    from sciqa.tracking import runs as tracking
    from sciqa.tracking.runs import step_run

    arms = parse_arms(run_ids)
    keys = [",".join(arm) for arm in arms]
    base_arm = parse_arms([baseline])[0] if baseline else (arms[0] if arms else [])
    baseline = ",".join(base_arm)
    if len(arms) < 2 or baseline not in keys:
        raise SciqaError("give at least two run ids (an arm of seed runs as A1,A2,A3), and --baseline one of "
                         "them as given (default: the first)")
    tracking.connect()
    runs = [r for arm in arms for r in arm]
    for r in runs:
        tracking.get_run(r)
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
    n_common = int(table["n"].max()) if len(table) else 0
    missing = {r[:8]: len(f) - n_common for r, f in rows.items() if len(f) != n_common}
    info = pd.DataFrame([{"arm": labels[k], "run id": r[:8], **{f: fields[r][f] for f in RUN_FIELDS},
                          **{k2: f"{v:.1f}" if v == v else "" for k2, v in row_rates(rows[r]).items()}}
                         for k, arm in zip(keys, arms) for r in arm])
    primary, exploratory = n_tests(table)
    seeds = max(len(a) for a in arms)
    head = (f"{len(arms) - 1} arm(s) vs {labels[baseline]} on n = {n_common} common problems"
            + (f"; ids missing elsewhere (left out): {missing}" if missing else "")
            + f". Primary: each arm's accuracy vs the baseline ({primary} tests, Holm; * = p_holm < 0.05); "
              f"{exploratory} exploratory tests. "
            + ("One seed run per arm: intervals cover the sampling of problems only, not training variance."
               if seeds == 1 else "Seed runs of an arm are replicates (mean over seeds)."))
    runs_text = info.to_markdown(index=False, tablefmt="simple", disable_numparse=True)
    text = f"{head}\n\n{runs_text}\n\n{to_text(table, labels)}\n"
    tracking.setup()
    inputs = {r: digest(rows[r].to_csv(index=False)) for r in runs}  # a re-evaluated input: a new compare run
    params = {"runs": " ".join(keys), "baseline": baseline, "by_group": by_group, "rows_digest": digest(inputs)}
    tags = {"sciqa.compared_runs": ",".join(runs), "sciqa.compared_arms": " ".join(keys), "sciqa.baseline_run": baseline}
    with step_run("compare", params, tags, f"compare-{len(arms)}-arms", parent_run_id=parent_run_id) as run:
        if run.reused:
            print(f"compare: reusing finished run {run.run_id}")
            return run.run_id, text
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            table.assign(run_label=table["run"].map(labels), baseline_label=table["baseline"].map(labels)).to_csv(
                d / "comparison.csv", index=False)
            info.to_csv(d / "runs.csv", index=False)
            (d / "comparison.md").write_text(
                f"{head} Method: {METHOD}.\n\n{YARDSTICKS}\n\n{info.to_markdown(index=False)}\n\n"
                f"{to_markdown(table, labels)}\n{READING}\n")
            mlflow.log_artifacts(tmp, "compare")
            mlflow.log_artifact(str(forest_plot(table, d / "deltas.png", labels)), "plots")
        short = {k: arm[0][:8] for k, arm in zip(keys, arms)}
        everything = table[table["group"] == "all"]
        mlflow.log_metrics(delta_metrics(everything.assign(run=everything["run"].map(short),
                                                           baseline=everything["baseline"].map(short))))
    return run.run_id, text
