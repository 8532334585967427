"""A grid's table on its parent run: ``grid/table.csv|md``, ``grid/comparisons.csv`` (as ``sciqa compare``) and
``plots/grid.png``; per cell the accuracy with its Wilson interval, or the final ``val_loss_golden``."""
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from scipy.stats import binomtest

from sciqa.errors import SciqaError
from sciqa.eval.metrics import names
from sciqa.eval.stats import compare_runs
from sciqa.steps.compare import log_report, run_rows
from sciqa.steps.evaluate import evaluate_run

# step -> (the metric of its table and heatmap, lower is better)
METRIC = {"benchmark": ("acc", False), "score": ("acc", False), "train_prefix": ("val_loss_golden", True),
          "train_lora": ("val_loss_golden", True)}
GROUPS = names("accuracy")[1:]  # acc_natural ... acc_g7_12
TRAINED = ("val_loss_golden", "train_loss", "acc", "overall")
CONFIDENCE = 0.95


def effective_run(run_id: str):
    """The run that holds a cell's result: a cell run that only records a reuse points at it."""
    run = MlflowClient().get_run(run_id)
    reused = run.data.tags.get("sciqa.reused_run", "")
    return MlflowClient().get_run(reused) if len(reused) == 32 and reused.isalnum() and reused != run_id else run


def _row(step: str, cell: dict) -> dict:
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


def table(step: str, cells: list[dict]) -> pd.DataFrame:
    """One row per cell (missing cells: status only); the best finished cell marked."""
    return mark_best(step, pd.DataFrame([_row(step, c) if c.get("run_id") else
                                         {**c["values"], "run_id": "", "status": "MISSING"} for c in cells]))


def mark_best(step: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Column ``best``: ``*`` on the best cell(s) by the step's metric (highest accuracy, lowest loss)."""
    metric, lower = METRIC[step]
    frame["best"] = ""
    if metric in frame and frame[metric].notna().any():
        best = frame[metric].min() if lower else frame[metric].max()
        frame.loc[frame[metric] == best, "best"] = "*"  # ties: every best cell
    return frame


def layout(axes: list[str]) -> tuple[str, list[str]]:
    """(the axis shown across: settings, as in the study's table, else the last one; the axes shown down)."""
    across = "setting" if "setting" in axes else axes[-1]
    return across, [a for a in axes if a != across]


def comparisons(frame: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Per combination of the other axes: each value of the column axis vs its first, on the problems all share."""
    across, others = layout(axes)
    done = frame[frame["status"] == "FINISHED"]
    out = []
    for key, group in (done.groupby(others, sort=False) if others else [((), done)]):
        group = group.set_index(across)
        order = [v for v in frame[across].unique() if v in group.index]
        if len(order) < 2:
            continue
        rows = compare_runs({v: run_rows(group.loc[v, "run_id"]) for v in order}, order[0], by_group=False)
        where = dict(zip(others, key if isinstance(key, tuple) else (key,)))
        out.append(rows.assign(**where)[[*others, *(c for c in rows.columns if c not in others)]])
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _fmt(value, digits: int = 1) -> str:
    return "" if pd.isna(value) else f"{value:.{digits}f}"


def markdown(step: str, frame: pd.DataFrame, axes: list[str], compared: pd.DataFrame | None) -> str:
    """The table as the study printed it (models down, settings across), then every column."""
    metric = METRIC[step][0]
    if metric == "acc" and "acc" in frame:
        cell = [f"{_fmt(a)} [{_fmt(lo)}, {_fmt(hi)}]{b}" if _fmt(a) else s for a, lo, hi, b, s in
                zip(frame["acc"], frame["ci_low"], frame["ci_high"], frame["best"], frame["status"])]
        title = f"Accuracy (%) with {CONFIDENCE:.0%} Wilson CI; * best"
    else:
        cell = [f"{_fmt(v, 4)}{b}" if _fmt(v) else s
                for v, b, s in zip(frame.get(metric, [None] * len(frame)), frame["best"], frame["status"])]
        title = f"{metric} (final); * best"
    every = frame.assign(**{c: [_fmt(v, 4 if "loss" in c else 2) for v in frame[c]]  # axis values as given
                            for c in frame.columns.difference(axes) if frame[c].dtype.kind == "f"})
    across, down = layout(axes)
    shown = frame.assign(cell=cell)
    pivot = (shown.pivot_table(index=down, columns=across, values="cell", aggfunc="first", sort=False) if down
             else shown.set_index(across)[["cell"]].T.rename(index={"cell": metric}))
    lines = [f"## Grid: {step}", "", title, "", pivot.to_markdown(disable_numparse=True), "", "## Every cell", "",
             every.to_markdown(index=False, disable_numparse=True), ""]
    if compared is not None and len(compared):
        narrow = compared.drop(columns=["family", "seeds_a", "seeds_b", "df", "per_seed"], errors="ignore")
        lines += [f"## Paired comparisons ({across})", "",
                  "run \u2212 baseline on the problems both answered, as `sciqa compare` reports it.", "",
                  narrow.to_markdown(index=False, floatfmt=".3g"), ""]
    return "\n".join(lines)


def heatmap(step: str, frame: pd.DataFrame, axes: list[str], path: Path) -> Path:
    """``plots/grid.png``: the step's metric, axes as in the markdown table."""
    metric, lower = METRIC[step]
    across, down = layout(axes)
    data = frame.assign(_row=frame[down].astype(str).agg(" ".join, axis=1) if down else metric)
    values = data.pivot_table(index="_row", columns=across, values=metric, aggfunc="first", sort=False) \
        if metric in data else None
    if values is None or values.empty:
        raise SciqaError(f"no finished cell has {metric}: nothing to plot")
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


def collect(parent_id: str, step: str, cells: list[dict]) -> str:
    """Evaluate what needs it, log the table, heatmap and comparisons to the parent; the markdown."""
    axes = list(cells[0]["values"]) if cells else []
    frame = table(step, cells)
    compared = comparisons(frame, axes) if step in ("benchmark", "score") and axes else None
    text = markdown(step, frame, axes, compared)
    finished = int((frame["status"] == "FINISHED").sum())
    files = {"table.csv": frame, "table.md": text, **({"comparisons.csv": compared} if compared is not None and
                                                      len(compared) else {})}
    log_report(files, {"grid.png": lambda p: heatmap(step, frame, axes, p)} if finished else {}, "grid", parent_id)
    MlflowClient().log_metric(parent_id, "grid_cells_finished", finished)
    return text
