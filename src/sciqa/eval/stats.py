"""Paired comparisons of arms of evaluated runs: is arm B really better than arm A on the same problems?

An *arm* is one run, or several runs of one procedure that differ only in the training seed. Seeds are
replicates, never majority-voted: an arm's value of a metric is the mean over its seeds of each seed
run's value (for accuracy: per problem, the fraction of seeds right), the number the runs table shows.

The model: problems x seeds, crossed random effects, fitted by the method of moments. For arm X with
S seeds and the n problems every run shares, ``y[s, i]`` is seed s's score on problem i: accuracy in
points (0 or 100, an unmapped answer is wrong); for a metric that skips rows (ROUGE-L and METEOR skip
empty explanations) and for the overall score, a linearised per-row value whose mean over problems
is exactly the seed run's value (:func:`linearised`). The estimate is ``mean(y_B) - mean(y_A)``; its
variance adds
  * seeds, per arm with S > 1 (S - 1 df): ``var_s(mean_i y[s, i]) / S``, the seed-to-seed variance of
    the arm's value (with seed variance alone this is Welch's t-test on the per-seed values);
  * problems (paired, n - 1 df): ``max(0, var_i(D_i) - sum_X MSE_X / S_X) / n`` with
    ``D_i = mean_s y_B[s, i] - mean_s y_A[s, i]`` and MSE_X the arm's seed x problem residual mean
    square: how differently the arms do problem by problem, without the per-row seed noise that the
    seed terms already hold (an arm of one seed has no MSE: its noise stays in this term).
The interval is ``diff ± t(df) · SE`` with Satterthwaite's df, and p is the t-test this interval
inverts, so interval and test always agree. With one seed in an arm there is no seed term: the
interval then covers the sampling of problems only, not training variance. Seeds are not assumed
paired across arms (conservative where seed s of A and B share initialisation and data order); the
per-seed paired differences are reported beside (``per_seed``).

Significance, one rule, on unrounded values: each comparison's primary endpoint (accuracy on all
problems) has a Holm-adjusted p over the primary rows of the table (``p_holm``) and is significant
when ``p_holm < 0.05``; every other row is exploratory, significant when its unadjusted 95 % interval
excludes zero (``p < 0.05``). No minimum effect is applied. The null simulation in
``tests/test_kd_vs_golden.py`` checks the 5 % level with seed variance.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from sciqa.eval.metrics import BY_NAME, EXPLANATION, LABELS

__all__ = ["ALPHA", "COLUMNS", "CONFIDENCE", "EXPLANATION", "METHOD", "Joined", "Paired", "arm_difference",
           "compare_runs", "decide", "forest_plot", "holm", "join_arms", "join_rows", "linearised", "n_tests", "p_text",
           "to_markdown", "to_text"]

ALPHA = 0.05
CONFIDENCE = 1 - ALPHA
METHOD = ("problems x seeds crossed random effects (method of moments), t interval with Satterthwaite df; "
          "the interval inverts the test")
COLUMNS = ["run", "baseline", "family", "metric", "group", "n", "seeds_a", "seeds_b", "a", "b", "diff", "ci_low",
           "ci_high", "df", "p_value", "p_holm", "significant", "per_seed"]
PRIMARY, EXPLORATORY = "primary", "exploratory"


@dataclass(frozen=True)
class Joined:
    """Runs' rows restricted to the common problems, all in the same (sorted id) order."""

    frames: dict[Hashable, pd.DataFrame]
    dropped: dict[Hashable, int]  # per run: its ids missing from some other run

    @property
    def n(self) -> int:
        return len(next(iter(self.frames.values())))


@dataclass(frozen=True)
class Paired:
    """Arm B vs arm A on n problems: both values, diff = b - a, its interval, df and p."""

    n: int
    seeds_a: int
    seeds_b: int
    a: float
    b: float
    diff: float
    ci_low: float
    ci_high: float
    df: float
    p_value: float
    per_seed: str = ""  # seed s of b minus seed s of a, in seed order, where both arms have several seeds


GOLD = ("answer", "reference")  # what must agree between runs for a common id to be the same problem


def join_rows(frames: Mapping[Hashable, pd.DataFrame]) -> Joined:
    """Inner-join runs by problem id so every comparison is on exactly the same problems; a common
    id whose gold answer or reference text differs between runs is refused (not the same problem)."""
    ids = {label: frame["id"].astype(str) for label, frame in frames.items()}  # CSV may give numbers
    for label, s in ids.items():
        if s.duplicated().any():
            raise ValueError(f"run {label!r} has duplicate problem ids (e.g. {s[s.duplicated()].iloc[0]!r})")
    common = sorted(set.intersection(*(set(s) for s in ids.values()))) if ids else []
    if not common:
        raise ValueError(f"no problem ids in common across runs {list(frames)}")
    joined = {label: frame.assign(id=ids[label]).set_index("id").loc[common].reset_index()
              for label, frame in frames.items()}
    _check_gold(joined)
    return Joined(joined, {label: len(ids[label]) - len(common) for label in frames})


def _check_gold(joined: Mapping[Hashable, pd.DataFrame]) -> None:
    labels = list(joined)
    first = joined[labels[0]]
    for column in GOLD:
        if not all(column in f for f in joined.values()):
            continue
        for label in labels[1:]:
            differ = first[column].astype(str).to_numpy() != joined[label][column].astype(str).to_numpy()
            if differ.any():
                raise ValueError(f"problem {first['id'].iloc[int(np.argmax(differ))]!r} has a different gold "
                                 f"{column} in runs {labels[0]!r} and {label!r}: they were scored on different data")


# --------------------------------------------------------------------------- the model


def linearised(values: np.ndarray) -> np.ndarray:
    """(seeds, n) per-row values, NaN where a row is skipped -> per-row values whose plain mean over
    problems is each seed's NaN-skipping mean (a skipped row adds nothing to it, a kept one its
    deviation scaled by n / kept): the ratio estimator's first-order (delta-method) linearisation.
    A seed with no kept row stays NaN (the metric is undefined for that run)."""
    values = np.asarray(values, dtype=float)
    known = ~np.isnan(values)
    kept = known.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(known, values, 0.0).sum(axis=1, keepdims=True) / kept
        return mean + np.where(known, values - mean, 0.0) * values.shape[1] / kept


def _seed_terms(y: np.ndarray) -> tuple[float, float]:
    """One arm's (variance of its per-seed values, seed x problem residual mean square MSE)."""
    s, n = y.shape
    per_seed = y.mean(axis=1)
    resid = y - per_seed[:, None] - y.mean(axis=0)[None, :] + y.mean()
    mse = float((resid ** 2).sum()) / ((s - 1) * (n - 1)) if n > 1 else 0.0
    return float(per_seed.var(ddof=1)), mse


def arm_difference(a, b, confidence: float = CONFIDENCE) -> Paired:
    """B - A from (seeds, n) per-row values of the same problems (columns aligned): see the module."""
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired arms need the same problems, got {a.shape[1]} and {b.shape[1]}")
    n = a.shape[1]
    per_problem = b.mean(axis=0) - a.mean(axis=0)
    diff = float(b.mean() - a.mean())  # = mean of per_problem, without its rounding
    seeds = [(len(y),) + _seed_terms(y) for y in (a, b) if len(y) > 1]
    parts = [(v / s, s - 1) for s, v, _ in seeds]
    if n > 1:  # the problem term, without the seed x problem noise the seed terms already hold
        noise = sum(mse / s for s, _, mse in seeds)
        parts.append((max(0.0, float(per_problem.var(ddof=1)) - noise) / n, n - 1))
    var = sum(c for c, _ in parts)
    if not parts:
        low = high = df = p = float("nan")
    elif var <= 1e-12 * max(1.0, diff * diff):  # no spread at all: the difference is what it is
        low = high = diff
        df, p = float("inf"), 1.0 if diff == 0 else 0.0
    else:
        df = var ** 2 / sum(c ** 2 / d for c, d in parts if c > 0)
        se = var ** 0.5
        half = float(student_t.ppf(0.5 + confidence / 2, df)) * se
        low, high, p = diff - half, diff + half, float(2 * student_t.sf(abs(diff) / se, df))
    paired = ""
    if len(a) == len(b) > 1:
        paired = " ".join(f"{d:+.4g}" for d in b.mean(axis=1) - a.mean(axis=1))
    return Paired(n, len(a), len(b), float(a.mean()), float(b.mean()), diff, low, high, df, p, paired)


# --------------------------------------------------------------------------- arms


def _arm_values(frames: Sequence[pd.DataFrame], metric: str, mask: np.ndarray | None = None) -> np.ndarray | None:
    """(seeds, n) values of one metric for an arm (None: undefined for some seed run)."""
    if metric == "acc":
        y = np.stack([100.0 * _truth(f["correct"]) for f in frames])
        return y if mask is None else y[:, mask]
    if metric == "overall":
        parts = [_arm_values(frames, name) for name in EXPLANATION]
        if any(p is None for p in parts):
            return None
        weights = [2.0 if name == "cosine" else 1.0 for name in EXPLANATION]
        return 100.0 * (sum(w * p for w, p in zip(weights, parts)) - 1.0) / len(EXPLANATION)
    if not all(metric in f for f in frames):
        return None
    y = linearised(np.stack([f[metric].to_numpy(dtype=float) for f in frames]))
    return None if np.isnan(y).any() else y


def _truth(column: pd.Series) -> np.ndarray:
    """A yes/no column as read back from a CSV or built in memory; missing = no (an unmapped answer is wrong)."""
    return column.astype(str).str.strip().str.lower().isin(["true", "1", "1.0"]).to_numpy(dtype=float)


def _groups(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Accuracy groups, defined as in ``metrics.accuracy_breakdown``."""
    text = (frame["hint"].fillna("").astype(str).str.strip() != "").to_numpy()
    image = _truth(frame["has_image"])
    grade = frame["grade"].astype(str).str.extract(r"(\d+)", expand=False).astype(float)
    subjects = sorted(frame["subject"].dropna().unique())
    return {**{f"subject={s}": (frame["subject"] == s).to_numpy() for s in subjects},
            "context=text": text, "context=image": image > 0, "context=none": ~text & ~(image > 0),
            "grade=1-6": grade.between(1, 6).to_numpy(), "grade=7-12": grade.between(7, 12).to_numpy()}


def _as_arm(value) -> list[pd.DataFrame]:
    return [value] if isinstance(value, pd.DataFrame) else list(value)


def join_arms(arms: Mapping[str, pd.DataFrame | Sequence[pd.DataFrame]]) -> tuple[dict[str, list], Joined]:
    """Every run of every arm joined on the problems all of them share: arm -> its aligned frames."""
    runs = {(label, i): f for label, arm in arms.items() for i, f in enumerate(_as_arm(arm))}
    joined = join_rows({_run_name(arms, key): f for key, f in runs.items()})
    frames = list(joined.frames.values())
    out, k = {}, 0
    for label, arm in arms.items():
        out[label] = frames[k:k + len(_as_arm(arm))]
        k += len(_as_arm(arm))
    return out, joined


def _run_name(arms: Mapping, key: tuple[str, int]) -> str:
    label, i = key
    return label if len(_as_arm(arms[label])) == 1 else f"{label} (seed run {i + 1})"


def compare_runs(arms: Mapping[str, pd.DataFrame | Sequence[pd.DataFrame]], baseline: str, *,
                 by_group: bool = True, primary: bool = True, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One tidy row per (arm vs baseline, metric, group) on the problems all runs share. An arm is a
    frame (one run) or a list of frames (its seed runs). ``primary``: each arm's accuracy on all
    problems is a primary endpoint (Holm-adjusted); every other row is exploratory.

    A metric undefined for a run is left out (ROUGE-L and METEOR skip empty explanations, so a run
    of empty explanations has neither, nor an overall score), never shown as NaN."""
    if baseline not in arms:
        raise ValueError(f"baseline {baseline!r} is not one of the runs {list(arms)}")
    frames, joined = join_arms(arms)
    base = frames[baseline]
    groups = {"all": None, **(_groups(base[0]) if by_group else {})}
    rows = []
    for run, other in frames.items():
        if run == baseline:
            continue
        wanted = [("acc", g, m) for g, m in groups.items() if m is None or m.any()]
        wanted += [(name, "all", None) for name in (*EXPLANATION, "overall")]
        for metric, group, mask in wanted:
            a, b = _arm_values(base, metric, mask), _arm_values(other, metric, mask)
            if a is None or b is None or not a.shape[1]:
                continue
            r = arm_difference(a, b, confidence)
            family = PRIMARY if primary and (metric, group) == ("acc", "all") else EXPLORATORY
            rows.append({**asdict(r), "run": run, "baseline": baseline, "metric": metric, "group": group,
                         "family": family})
    return decide(pd.DataFrame(rows, columns=COLUMNS))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979): sorted p times (m - rank), kept monotone, at most 1."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(p)
    out[order] = adjusted
    return out


def decide(table: pd.DataFrame) -> pd.DataFrame:
    """``p_holm`` over the primary rows with a p, and the one significance rule (module docstring)."""
    table = table.copy()
    primary = (table["family"] == PRIMARY).to_numpy() & table["p_value"].notna().to_numpy()
    table["p_holm"] = np.nan
    table.loc[primary, "p_holm"] = holm(table.loc[primary, "p_value"].to_numpy(dtype=float))
    decided = np.where(primary, table["p_holm"], table["p_value"]).astype(float)
    table["significant"] = np.nan_to_num(decided, nan=1.0) < ALPHA
    return table


def n_tests(table: pd.DataFrame) -> tuple[int, int]:
    """(primary, exploratory) tests in a table: what the header says was run."""
    primary = int((table["family"] == PRIMARY).sum())
    return primary, len(table) - primary


# --------------------------------------------------------------------------- reports


def _points(metric: str) -> bool:
    """On a 0-100 scale (accuracy, overall) rather than 0-1 (explanation metrics)."""
    return BY_NAME[metric].scale == "points"


def _num(value: float, metric: str, signed: bool = False) -> str:
    """Points with one decimal, 0-1 metrics with three; a real minus sign for prose."""
    text = f"{value:{'+' if signed else ''}.{1 if _points(metric) else 3}f}"
    return text.replace("-", "\u2212")


def p_text(p: float) -> str:
    """p with two significant digits, more where two would show 0.05 itself or the other side of it."""
    if p != p:
        return ""
    if p < 0.001:
        return "<0.001"
    for digits in (2, 3, 4, 6):
        text = f"{p:.{digits}g}"
        if float(text) != ALPHA and (float(text) < ALPHA) == (p < ALPHA):
            return text
    return f"{p:.6g}"


def _ci(r, metric: str) -> str:
    return f"[{_num(r.ci_low, metric, True)}, {_num(r.ci_high, metric, True)}]"


def _pair(r, name: Mapping) -> str:
    return f"{name.get(r.run, r.run)} vs {name.get(r.baseline, r.baseline)}"


def _display(table: pd.DataFrame, labels: Mapping[str, str] | None) -> pd.DataFrame:
    """Every row as strings: the markdown table of ``comparison.md``."""
    name = dict(labels or {})
    return pd.DataFrame([{
        "comparison": _pair(r, name), "family": r.family, "metric": r.metric, "group": r.group, "n": str(r.n),
        "seeds": f"{r.seeds_a}/{r.seeds_b}", "a": _num(r.a, r.metric), "b": _num(r.b, r.metric),
        "diff": _num(r.diff, r.metric, True), "95% CI": _ci(r, r.metric), "p": p_text(r.p_value),
        "p_holm": p_text(r.p_holm), "sig": "*" if r.significant else "", "per-seed diffs": r.per_seed or ""}
        for r in table.itertuples()])


def to_text(table: pd.DataFrame, labels: Mapping[str, str] | None = None) -> str:
    """The terminal table: one line per comparison, accuracy (both arms, diff, interval, p, p_holm)
    and the overall score's difference; ``*`` marks a significant primary endpoint only."""
    name = dict(labels or {})
    everything = table[table["group"] == "all"]
    lines = []
    for (run, baseline), rows in everything.groupby(["run", "baseline"], sort=False):
        by_metric = {r.metric: r for r in rows.itertuples()}
        acc, overall = by_metric.get("acc"), by_metric.get("overall")
        if acc is None:
            continue
        lines.append({
            "comparison": _pair(acc, name), "n": str(acc.n), "seeds": f"{acc.seeds_a}/{acc.seeds_b}",
            "acc a": _num(acc.a, "acc"), "acc b": _num(acc.b, "acc"),
            "acc diff [95% CI]": f"{_num(acc.diff, 'acc', True)} {_ci(acc, 'acc')}", "p": p_text(acc.p_value),
            "p_holm": p_text(acc.p_holm) + (" *" if acc.family == PRIMARY and acc.significant else ""),
            "overall diff [95% CI]": "" if overall is None else f"{_num(overall.diff, 'overall', True)} "
                                                                f"{_ci(overall, 'overall')}"})
    if not lines:
        return "No comparisons (no runs besides the baseline, or no common problems)."
    return pd.DataFrame(lines).to_markdown(index=False, tablefmt="simple", disable_numparse=True)


def _verdict(r) -> str:
    if not r.significant:
        return "cannot tell apart at 5 %"
    return "significant at 5 %" + (" (Holm-adjusted)" if r.family == PRIMARY else " (exploratory, unadjusted)")


def to_markdown(table: pd.DataFrame, labels: Mapping[str, str] | None = None) -> str:
    """Markdown table, a sentence per primary endpoint and per exploratory row whose interval excludes
    zero, the rest summarised."""
    if table.empty:
        return "No comparisons (no runs besides the baseline, or no common problems).\n"
    shown = _display(table, labels)
    primary, exploratory = n_tests(table)
    lines = [shown.to_markdown(index=False, disable_numparse=True), "",
             f"Differences are run \u2212 baseline with {CONFIDENCE:.0%} intervals ({METHOD}). {primary} primary "
             f"test(s), Holm-adjusted (p_holm); {exploratory} exploratory test(s), unadjusted. Seeds a/b: seed "
             "runs per arm; with one seed per arm an interval covers the sampling of problems only, not training "
             "variance.", ""]
    quiet: dict[str, list[str]] = {}
    for r, s in zip(table.itertuples(), shown.to_dict("records")):
        what = LABELS[r.metric] + ("" if r.group == "all" else f" ({r.group})")
        if r.family != PRIMARY and not r.significant:
            quiet.setdefault(s["comparison"], []).append(what)
            continue
        unit = " points" if _points(r.metric) else ""
        p = f", p = {s['p']}" if s["p"] else ""
        p += f", p_holm = {s['p_holm']}" if s["p_holm"] else ""
        seeds = f", {r.seeds_a}/{r.seeds_b} seeds" if max(r.seeds_a, r.seeds_b) > 1 else ""
        lines.append(f"- {s['comparison']}: {what} {s['diff']}{unit} {s['95% CI']}{p}, n = {r.n}{seeds} \u2014 "
                     f"{_verdict(r)}.")
    lines += [f"- {pair}: cannot tell apart at 5 % (exploratory) for {', '.join(whats)}."
              for pair, whats in quiet.items()]
    return "\n".join(lines) + "\n"


def forest_plot(table: pd.DataFrame, path: str | Path, labels: Mapping[str, str] | None = None) -> Path:
    """Differences with intervals per (run vs baseline, metric): points panel (acc, overall) and 0-1 panel."""
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
    name = dict(labels or {})
    for ax, (title, part) in zip(axes[0], panels):
        y = np.arange(len(part))[::-1]
        for significant, color in ((False, "tab:gray"), (True, "tab:red")):
            sel = (part["significant"] == significant).to_numpy()
            d, low, high = (part[c].to_numpy(dtype=float)[sel] for c in ("diff", "ci_low", "ci_high"))
            ax.errorbar(d, y[sel], xerr=np.clip([d - low, high - d], 0, None), fmt="o", color=color, capsize=3)
        ax.axvline(0, color="black", linestyle="--", linewidth=1)
        ticks = [f"{_pair(r, name)}: {LABELS[r.metric]}" for r in part.itertuples()]
        ax.set_yticks(y, [t if len(t) <= 70 else f"{t[:40]}\u2026{t[-29:]}" for t in ticks])  # fits the figure
        ax.set_title(title)
        ax.set_xlabel(f"run \u2212 baseline, {CONFIDENCE:.0%} interval (red: significant)")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
