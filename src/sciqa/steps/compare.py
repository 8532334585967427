"""``sciqa compare`` (arms of evaluated runs, one run or its seed runs, vs a baseline arm, joined on the per-row
scores they logged) and a grid's table (``grid/``, ``plots/grid.png``); ``main``'s report shares these pieces."""
import io
import numbers
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from scipy.stats import binomtest

from sciqa.errors import SciqaError
from sciqa.eval.metrics import EXPLANATION, names
from sciqa.eval.parsing import FUZZY_RULES
from sciqa.eval.stats import CONFIDENCE, METHOD, compare_runs, forest_plot, n_tests, to_markdown, to_text
from sciqa.files import digest
from sciqa.steps.evaluate import evaluate_run
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
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/{found[0]}")
    return pd.read_csv(io.StringIO(text), dtype={"id": str}, keep_default_na=False,
                       na_values={k: [""] for k in (*EXPLANATION, "answer_index")})


def row_rates(frame: pd.DataFrame) -> dict[str, float]:
    """% of empty explanations and % of answers mapped by a fuzzy parse rule (NaN where not recorded)."""
    def share(column: str, test: Callable) -> float:
        return 100.0 * float(test(frame[column].fillna("").astype(str)).mean()) if column in frame else np.nan

    return {"empty_explanation_rate": share("prediction", lambda s: s.str.strip().eq("")),
            "fuzzy_mapped_rate": share("rule", lambda s: s.isin(FUZZY_RULES))}


def paired(arms: dict, baseline: str, what: str, **options) -> pd.DataFrame:
    """``compare_runs`` of per-row score frames; what it refuses (no common ids, other gold) as one line."""
    try:
        return compare_runs(arms, baseline, **options)
    except ValueError as exc:
        raise SciqaError(f"cannot compare {what}: {exc}") from None


def to_md(frame: pd.DataFrame, decimals: Callable[[str], int]) -> str:
    """A markdown table for people: floats with ``decimals(column)`` places, blanks for NaN, the rest as given."""
    def cell(column: str, value) -> str:
        if isinstance(value, str | numbers.Integral):
            return str(value)
        return "" if value is None or value != value else f"{value:.{decimals(column)}f}"

    return frame.apply(lambda col: [cell(col.name, v) for v in col]).to_markdown(index=False, disable_numparse=True)


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
    client, run_id = MlflowClient(), run_id or mlflow.active_run().info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        drawn = [draw(Path(tmp) / name) for name, draw in plots.items()]  # a plot that fails: nothing logged
        for name, content in files.items():
            client.log_text(run_id, content.to_csv(index=False) if isinstance(content, pd.DataFrame) else content,
                            f"{folder}/{name}")
        for path in drawn:
            client.log_artifact(run_id, str(path), "plots")


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
    table = paired({k: [rows[r] for r in arm] for k, arm in zip(keys, arms)}, baseline, "these runs", by_group=by_group)
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
        short = {k: arm[0][:8] for k, arm in zip(keys, arms)}  # metric names: the arms' first runs
        mlflow.log_metrics(delta_metrics(table[table["group"] == "all"].replace({"run": short, "baseline": short})))
    return run.run_id, text


# step -> (the metric of its table and heatmap, lower is better)
GRID_METRIC = {"benchmark": ("acc", False), "score": ("acc", False), "train_prefix": ("val_loss_golden", True),
               "train_lora": ("val_loss_golden", True)}
GROUPS = names("accuracy")[1:]  # acc_natural ... acc_g7_12
TRAINED = ("val_loss_golden", "train_loss", "acc", "overall")


def effective_run(run_id: str):
    """The run that holds a cell's result: a cell run that only records a reuse points at it."""
    run = MlflowClient().get_run(run_id)
    reused = run.data.tags.get("sciqa.reused_run", "")
    return MlflowClient().get_run(reused) if len(reused) == 32 and reused.isalnum() and reused != run_id else run


def _cell_row(step: str, cell: dict) -> dict:
    """A cell's row; a finished benchmark cell is evaluated first (once: a run with ``acc`` is left as it is)."""
    run = effective_run(cell["run_id"])
    if step == "benchmark" and run.info.status == "FINISHED" and "acc" not in run.data.metrics:
        evaluate_run(run.info.run_id, dataset=run.data.params.get("dataset", ""))
        run = effective_run(cell["run_id"])
    m = run.data.metrics
    row = {**cell["values"], "run_id": run.info.run_id, "status": run.info.status}
    if step not in ("benchmark", "score"):
        return {**row, **{k: m[k] for k in TRAINED if k in m}}
    n, low, high = int(m.get("n", 0)), np.nan, np.nan
    if n and "acc" in m:
        ci = binomtest(round(m["acc"] * n / 100), n).proportion_ci(CONFIDENCE, method="wilson")
        low, high = 100 * ci.low, 100 * ci.high
    return {**row, "n": n, "acc": m.get("acc"), "ci_low": low, "ci_high": high, "unmapped_rate": m.get("unmapped_rate"),
            **{g: m.get(g) for g in GROUPS}}


def grid_table(step: str, cells: list[dict]) -> pd.DataFrame:
    """One row per cell (missing cells: status only); the best finished cell marked."""
    return mark_best(step, pd.DataFrame([_cell_row(step, c) if c.get("run_id") else
                                         {**c["values"], "run_id": "", "status": "MISSING"} for c in cells]))


def mark_best(step: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Column ``best``: ``*`` on the best cell(s) by the step's metric (highest accuracy, lowest loss)."""
    metric, lower = GRID_METRIC[step]
    frame["best"] = ""
    if metric in frame and frame[metric].notna().any():
        best = frame[metric].min() if lower else frame[metric].max()
        frame.loc[frame[metric] == best, "best"] = "*"  # ties: every best cell
    return frame


def grid_layout(axes: list[str]) -> tuple[str, list[str]]:
    """(the axis shown across: settings, as in the study's table, else the last one; the axes shown down)."""
    across = "setting" if "setting" in axes else axes[-1]
    return across, [a for a in axes if a != across]


def grid_comparisons(frame: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Per combination of the other axes: each value of the column axis vs its first, on the problems all share."""
    across, others = grid_layout(axes)
    done = frame[frame["status"] == "FINISHED"]
    out = []
    for key, group in (done.groupby(others, sort=False) if others else [((), done)]):
        group = group.set_index(across)
        order = [v for v in frame[across].unique() if v in group.index]
        if len(order) < 2:
            continue
        rows = paired({v: run_rows(group.loc[v, "run_id"]) for v in order}, order[0], "grid cells", by_group=False)
        where = dict(zip(others, key if isinstance(key, tuple) else (key,)))
        out.append(rows.assign(**where)[[*others, *(c for c in rows.columns if c not in others)]])
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _fmt(value, digits: int = 1) -> str:
    return "" if pd.isna(value) else f"{value:.{digits}f}"


def grid_markdown(step: str, frame: pd.DataFrame, axes: list[str], compared: pd.DataFrame) -> str:
    """The table as the study printed it (models down, settings across), then every column."""
    metric = GRID_METRIC[step][0]
    if metric == "acc" and "acc" in frame:
        cell = [f"{_fmt(a)} [{_fmt(lo)}, {_fmt(hi)}]{b}" if _fmt(a) else s for a, lo, hi, b, s in
                zip(frame["acc"], frame["ci_low"], frame["ci_high"], frame["best"], frame["status"])]
        title = f"Accuracy (%) with {CONFIDENCE:.0%} Wilson CI; * best"
    else:
        cell = [f"{_fmt(v, 4)}{b}" if _fmt(v) else s
                for v, b, s in zip(frame.get(metric, [None] * len(frame)), frame["best"], frame["status"])]
        title = f"{metric} (final); * best"
    across, down = grid_layout(axes)
    shown = frame.assign(cell=cell)
    pivot = (shown.pivot_table(index=down, columns=across, values="cell", aggfunc="first", sort=False) if down
             else shown.set_index(across)[["cell"]].T.rename(index={"cell": metric}))
    lines = [f"## Grid: {step}", "", title, "", pivot.to_markdown(disable_numparse=True), "", "## Every cell", "",
             to_md(frame, lambda c: 4 if "loss" in c else 2), ""]  # axis values as given
    if len(compared):
        narrow = compared.drop(columns=["family", "seeds_a", "seeds_b", "df", "per_seed"], errors="ignore")
        lines += [f"## Paired comparisons ({across})", "",
                  "run \u2212 baseline on the problems both answered, as `sciqa compare` reports it.", "",
                  narrow.to_markdown(index=False, floatfmt=".3g"), ""]
    return "\n".join(lines)


def grid_heatmap(step: str, frame: pd.DataFrame, axes: list[str], path: Path) -> Path:
    """``plots/grid.png``: the step's metric, axes as in the markdown table."""
    metric, lower = GRID_METRIC[step]
    across, down = grid_layout(axes)
    if metric not in frame or frame[metric].isna().all():
        raise SciqaError(f"no finished cell has {metric}: nothing to plot")
    values = frame.assign(_row=frame[down].astype(str).agg(" ".join, axis=1) if down else metric).pivot_table(
        index="_row", columns=across, values=metric, aggfunc="first", sort=False)
    fig = Figure(figsize=(1.6 + 1.3 * values.shape[1], 1.2 + 0.6 * values.shape[0]), layout="tight")
    ax = fig.subplots()
    image = ax.imshow(values.to_numpy(dtype=float), cmap="viridis_r" if lower else "viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]), list(values.columns))
    ax.set_yticks(range(values.shape[0]), list(values.index))
    for (i, j), v in np.ndenumerate(values.to_numpy(dtype=float)):
        ax.text(j, i, _fmt(v, 1 if metric == "acc" else 3), ha="center", va="center", color="white")
    fig.colorbar(image, ax=ax, label=metric)
    ax.set(xlabel=across, title=f"grid {step}: {metric}")
    fig.savefig(path, dpi=110)
    return path


def collect_grid(parent_id: str, step: str, cells: list[dict]) -> tuple[str, pd.DataFrame]:
    """Evaluate what needs it, log the table, heatmap and comparisons to the parent; (the markdown, the table)."""
    axes = list(cells[0]["values"])
    frame = grid_table(step, cells)
    compared = grid_comparisons(frame, axes) if step in ("benchmark", "score") else pd.DataFrame()
    text = grid_markdown(step, frame, axes, compared)
    finished = int((frame["status"] == "FINISHED").sum())
    files = {"table.csv": frame, "table.md": text, **({"comparisons.csv": compared} if len(compared) else {})}
    log_report(files, {"grid.png": lambda p: grid_heatmap(step, frame, axes, p)} if finished else {}, "grid", parent_id)
    MlflowClient().log_metric(parent_id, "grid_cells_finished", finished)
    return text, frame
