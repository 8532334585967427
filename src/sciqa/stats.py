"""Paired comparisons of evaluated runs: is run B really better than run A on the same problems?

Every run was scored on the same problems, so differences are judged *paired*: per-problem
resampling (bootstrap) for confidence intervals and McNemar's exact test for accuracy. Inputs are
the per-row score tables that evaluation writes (``metrics/<stem>_rows.csv``).

CI method: percentile bootstrap for every metric. ``overall`` is a non-linear function of five
NaN-skipping column means, so BCa would need an n-fold jackknife of it, and BCa is undefined (NaN,
warnings) when the resampled differences are constant, e.g. a handful of discordant answers; one
method for all rows keeps them comparable. With hundreds of problems the two barely differ.
All resampling goes through one vectorised helper with ``np.random.default_rng(seed)``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from sciqa.metrics import BY_NAME, EXPLANATION, LABELS

__all__ = ["CONFIDENCE", "EXPLANATION", "N_RESAMPLES", "SEED", "Joined", "Paired", "compare_runs",
           "forest_plot", "join_rows", "paired_accuracy", "paired_metric", "paired_overall", "to_markdown",
           "to_text"]

SEED = 0
N_RESAMPLES = 10000
CONFIDENCE = 0.95
MIN_N = 10  # fewer problems than this: no difference is called significant
COLUMNS = ["run", "baseline", "metric", "group", "n", "a", "b", "diff", "ci_low", "ci_high", "p_value", "significant"]
_BATCH_CELLS = 2_000_000  # resample counts held at once (16 MB): bounded memory at any n


@dataclass(frozen=True)
class Joined:
    """Runs' rows restricted to the common problems, all in the same (sorted id) order."""

    frames: dict[str, pd.DataFrame]
    dropped: dict[str, int]  # per run: its ids missing from some other run

    @property
    def n(self) -> int:
        return len(next(iter(self.frames.values())))


@dataclass(frozen=True)
class Paired:
    """B vs A on n problems: both values, diff = b - a and its CI (points for acc/overall)."""

    n: int
    a: float
    b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float | None = None
    b01: int | None = None  # a wrong, b right
    b10: int | None = None  # a right, b wrong


def join_rows(frames: Mapping[str, pd.DataFrame]) -> Joined:
    """Inner-join runs by problem id so every comparison is on exactly the same problems."""
    ids = {label: frame["id"].astype(str) for label, frame in frames.items()}  # CSV may give numbers
    for label, s in ids.items():
        if s.duplicated().any():
            raise ValueError(f"run {label!r} has duplicate problem ids (e.g. {s[s.duplicated()].iloc[0]!r})")
    common = sorted(set.intersection(*(set(s) for s in ids.values()))) if ids else []
    if not common:
        raise ValueError(f"no problem ids in common across runs {list(frames)}")
    joined = {label: frame.assign(id=ids[label]).set_index("id").loc[common].reset_index()
              for label, frame in frames.items()}
    return Joined(joined, {label: len(ids[label]) - len(common) for label in frames})


def _bootstrap(columns: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], *, seed: int,
               n_resamples: int, confidence: float) -> tuple[float, float, float]:
    """(estimate, ci_low, ci_high): percentile CI of ``statistic`` over resamples of the problems.

    Every statistic here is a function of column sums over the drawn problems, so a resample is
    a row of draw counts and a batch of resamples is one matrix product: no gathered copies.
    """
    n = len(columns)
    estimate = float(statistic(columns.sum(axis=0, keepdims=True))[0])
    rng = np.random.default_rng(seed)
    per_batch = max(1, _BATCH_CELLS // n)
    draws = []
    for start in range(0, n_resamples, per_batch):
        size = min(per_batch, n_resamples - start)
        picks = rng.integers(0, n, (size, n)) + n * np.arange(size)[:, None]
        counts = np.bincount(picks.ravel(), minlength=size * n).reshape(size, n).astype(float)
        draws.append(statistic(counts @ columns))
    dist = np.concatenate(draws)
    dist = dist[np.isfinite(dist)]
    if not dist.size:
        return estimate, float("nan"), float("nan")
    if np.ptp(dist) <= 1e-9 * max(1.0, abs(estimate)):  # all differences equal: no spread, no noise
        return estimate, estimate, estimate
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(dist, [tail, 100 - tail])
    return estimate, float(low), float(high)


def _paired_means(a, b, scale: float, seed: int, n_resamples: int, confidence: float) -> Paired:
    """Mean of b - a over the rows where both are known (scaled), with its bootstrap CI."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need the same 1-d shape, got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b, n = a[keep], b[keep], int(keep.sum())
    if not n:
        return Paired(0, *[float("nan")] * 5)
    diff, low, high = _bootstrap((b - a)[:, None], lambda s: scale * s[:, 0] / n, seed=seed,
                                 n_resamples=n_resamples, confidence=confidence)
    return Paired(n, scale * float(a.sum()) / n, scale * float(b.sum()) / n, diff, low, high)


def paired_accuracy(a_correct, b_correct, *, seed: int = SEED, n_resamples: int = N_RESAMPLES,
                    confidence: float = CONFIDENCE) -> Paired:
    """Accuracy difference (points) with bootstrap CI and exact McNemar p (missing = wrong)."""
    a = pd.Series(np.asarray(a_correct)).fillna(False).to_numpy(dtype=bool)
    b = pd.Series(np.asarray(b_correct)).fillna(False).to_numpy(dtype=bool)
    result = _paired_means(a, b, 100.0, seed, n_resamples, confidence)
    b01, b10 = int((~a & b).sum()), int((a & ~b).sum())
    p = binomtest(b01, b01 + b10, 0.5).pvalue if b01 + b10 else 1.0
    return replace(result, p_value=float(p), b01=b01, b10=b10)


def paired_metric(a_values, b_values, *, seed: int = SEED, n_resamples: int = N_RESAMPLES,
                  confidence: float = CONFIDENCE) -> Paired:
    """Mean difference of a per-row metric; rows NaN on either side are dropped (n says how many used)."""
    return _paired_means(a_values, b_values, 1.0, seed, n_resamples, confidence)


def paired_overall(a: pd.DataFrame, b: pd.DataFrame, *, seed: int = SEED, n_resamples: int = N_RESAMPLES,
                   confidence: float = CONFIDENCE) -> Paired:
    """Overall-score difference of row-aligned frames: resamples problems and recomputes the score."""
    x, y = a[list(EXPLANATION)].to_numpy(dtype=float), b[list(EXPLANATION)].to_numpy(dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired frames need the same rows, got {len(x)} and {len(y)}")
    columns = np.hstack([np.nan_to_num(x), ~np.isnan(x), np.nan_to_num(y), ~np.isnan(y)])
    k = len(EXPLANATION)

    def score(sums: np.ndarray, run: int) -> np.ndarray:
        """The study's overall score from column sums and non-NaN counts (NaN-skipping means)."""
        own = sums[:, 2 * k * run:2 * k * (run + 1)]  # this run's [sums | counts]
        with np.errstate(divide="ignore", invalid="ignore"):
            means = own[:, :k] / own[:, k:]
        return 100.0 * (means[:, :4].sum(axis=1) + 2 * means[:, 4] - 1) / 5

    diff, low, high = _bootstrap(columns, lambda s: score(s, 1) - score(s, 0), seed=seed,
                                 n_resamples=n_resamples, confidence=confidence)
    total = columns.sum(axis=0, keepdims=True)
    return Paired(len(x), float(score(total, 0)[0]), float(score(total, 1)[0]), diff, low, high)


def _groups(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Accuracy groups, defined as in ``metrics.accuracy_breakdown``."""
    text = (frame["hint"].fillna("").astype(str).str.strip() != "").to_numpy()
    image = frame["has_image"].fillna(False).astype(bool).to_numpy()
    grade = frame["grade"].astype(str).str.extract(r"(\d+)", expand=False).astype(float)
    subjects = sorted(frame["subject"].dropna().unique())
    return {**{f"subject={s}": (frame["subject"] == s).to_numpy() for s in subjects},
            "context=text": text, "context=image": image, "context=none": ~text & ~image,
            "grade=1-6": grade.between(1, 6).to_numpy(), "grade=7-12": grade.between(7, 12).to_numpy()}


def _resolution(metric: str) -> float:
    """Half the last digit shown: 0.05 points, 0.0005 on the 0-1 scale."""
    return 0.05 if _points(metric) else 0.0005


def _significant(metric: str, r: Paired) -> bool:
    """At 5 %: McNemar's p for accuracy, a CI clear of zero for the rest. Never on fewer than
    ``MIN_N`` problems (a bootstrap of a handful of problems only restates them) nor for a CI that
    stays within the reported precision of zero (:func:`_resolution`): a BLEU-1 of 0.00001 against
    0.00002 is no finding, and the table would show it as -0.000 "significant"."""
    if r.n < MIN_N:
        return False
    if metric == "acc":
        return r.p_value < 0.05
    return r.ci_low >= _resolution(metric) or r.ci_high <= -_resolution(metric)


def compare_runs(frames: Mapping[str, pd.DataFrame], baseline: str, *, seed: int = SEED,
                 n_resamples: int = N_RESAMPLES, by_group: bool = True) -> pd.DataFrame:
    """One tidy row per (run vs baseline, metric, group) on the problems all runs share.

    A metric undefined for a run is left out (ROUGE-L and METEOR skip empty predictions, so a run
    of empty answers has neither, nor an overall score), never shown as NaN."""
    if baseline not in frames:
        raise ValueError(f"baseline {baseline!r} is not one of the runs {list(frames)}")
    joined = join_rows(frames)
    base = joined.frames[baseline]
    groups = {"all": np.ones(joined.n, dtype=bool), **(_groups(base) if by_group else {})}
    kw = {"seed": seed, "n_resamples": n_resamples}
    rows = []
    for run, other in joined.frames.items():
        if run == baseline:
            continue
        results = [("acc", g, paired_accuracy(base["correct"][m], other["correct"][m], **kw))
                   for g, m in groups.items()]
        metrics = [name for name in EXPLANATION if name in base and name in other]
        results += [(name, "all", paired_metric(base[name], other[name], **kw)) for name in metrics]
        if len(metrics) == len(EXPLANATION):
            results.append(("overall", "all", paired_overall(base, other, **kw)))
        for metric, group, r in results:
            significant = _significant(metric, r)
            rows += [{**asdict(r), "run": run, "baseline": baseline, "metric": metric, "group": group,
                      "significant": bool(significant)}] if r.n and np.isfinite(r.diff) else []
    return pd.DataFrame(rows, columns=COLUMNS)


def _points(metric: str) -> bool:
    """On a 0-100 scale (accuracy, overall) rather than 0-1 (explanation metrics)."""
    return BY_NAME[metric].scale == "points"


def _num(value: float, metric: str, signed: bool = False) -> str:
    """Points with one decimal, 0-1 metrics with three; a real minus sign for prose."""
    text = f"{value:{'+' if signed else ''}.{1 if _points(metric) else 3}f}"
    return text.replace("-", "\u2212")


def _display(table: pd.DataFrame, labels: Mapping[str, str] | None) -> pd.DataFrame:
    """The table as strings, shared by the markdown and terminal renderings."""
    name = dict(labels or {})
    return pd.DataFrame([{
        "comparison": f"{name.get(r.run, r.run)} vs {name.get(r.baseline, r.baseline)}", "metric": r.metric,
        "group": r.group, "n": str(r.n), "a": _num(r.a, r.metric), "b": _num(r.b, r.metric),
        "diff": _num(r.diff, r.metric, True),
        "95% CI": f"[{_num(r.ci_low, r.metric, True)}, {_num(r.ci_high, r.metric, True)}]",
        "p": "" if pd.isna(r.p_value) else f"{r.p_value:.2g}" if r.p_value >= 0.001 else "<0.001",
        "sig": "*" if r.significant else ""} for r in table.itertuples()])


def to_markdown(table: pd.DataFrame, labels: Mapping[str, str] | None = None) -> str:
    """Markdown table, a sentence per headline accuracy or significant difference, the rest summarised."""
    if table.empty:
        return "No comparisons (no runs besides the baseline, or no common problems).\n"
    shown = _display(table, labels)
    note = f"Differences are run \u2212 baseline, {CONFIDENCE:.0%} paired bootstrap CIs, exact McNemar p for accuracy."
    lines = [shown.to_markdown(index=False, disable_numparse=True), "", note, ""]
    quiet: dict[str, list[str]] = {}
    for r, s in zip(table.itertuples(), shown.to_dict("records")):
        what = LABELS[r.metric] + ("" if r.group == "all" else f" ({r.group})")
        if not r.significant and (r.metric, r.group) != ("acc", "all"):
            quiet.setdefault(s["comparison"], []).append(what)
            continue
        unit = " points" if _points(r.metric) else ""
        p = "" if not s["p"] else f", p {s['p']}" if s["p"][0] == "<" else f", p = {s['p']}"
        verdict = "significant" if r.significant else "not significant"
        lines.append(f"- {s['comparison']}: {what} {s['diff']}{unit} {s['95% CI']}{p}, n = {r.n} \u2014 "
                     f"{verdict} at 5 %.")
    lines += [f"- {pair}: not significant at 5 % for {', '.join(whats)}." for pair, whats in quiet.items()]
    return "\n".join(lines) + "\n"


def to_text(table: pd.DataFrame, labels: Mapping[str, str] | None = None) -> str:
    """Aligned plain-text table for a terminal."""
    return _display(table, labels).to_markdown(index=False, tablefmt="simple", disable_numparse=True)


def forest_plot(table: pd.DataFrame, path: str | Path, labels: Mapping[str, str] | None = None) -> Path:
    """Differences with CIs per (run vs baseline, metric): points panel (acc, overall) and 0-1 panel."""
    import matplotlib

    matplotlib.use("Agg")  # files only, also on machines without a display
    import matplotlib.pyplot as plt

    rows = table[table["group"] == "all"]
    points = rows["metric"].map(_points).astype(bool)
    panels = [("accuracy, overall (points)", rows[points]), ("explanation metrics (0\u20131 scale)", rows[~points])]
    panels = [(title, part) for title, part in panels if len(part)]
    if not panels:
        raise ValueError("nothing to plot: no group == 'all' rows")
    height = 1.2 + 0.4 * max(len(part) for _, part in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), height), squeeze=False)
    for ax, (title, part) in zip(axes[0], panels):
        y = np.arange(len(part))[::-1]
        for significant, color in ((False, "tab:gray"), (True, "tab:red")):
            sel = (part["significant"] == significant).to_numpy()
            d, low, high = (part[c].to_numpy(dtype=float)[sel] for c in ("diff", "ci_low", "ci_high"))
            ax.errorbar(d, y[sel], xerr=np.clip([d - low, high - d], 0, None), fmt="o", color=color, capsize=3)
        ax.axvline(0, color="black", linestyle="--", linewidth=1)
        ax.set_yticks(y, [f"{c}: {LABELS[m]}" for c, m in zip(_display(part, labels)["comparison"], part["metric"])])
        ax.set_title(title)
        ax.set_xlabel(f"run \u2212 baseline, {CONFIDENCE:.0%} CI (red: significant)")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
