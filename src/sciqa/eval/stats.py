"""Paired comparisons of arms (one run, or the seed means of one procedure's seed runs) on the problems they share;
accuracy on all problems is primary (Holm over the table), every other row exploratory."""
from collections import namedtuple
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import t as student_t

from sciqa.eval.metrics import BY_NAME, EXPLANATION, LABELS, OVERALL, accuracy_groups

ALPHA = 0.05
CONFIDENCE = 1 - ALPHA
METHOD = ("problems x seeds crossed random effects (method of moments), t interval with Satterthwaite df; "
          "the interval inverts the test")
COLUMNS = ["run", "baseline", "family", "metric", "group", "n", "seeds_a", "seeds_b", "a", "b", "diff", "ci_low",
           "ci_high", "df", "p_value", "p_holm", "significant", "per_seed"]
PRIMARY, EXPLORATORY = "primary", "exploratory"
GOLD = ("answer", "reference")  # what must agree between runs for a common id to be the same problem
POINTS = {name for name, metric in BY_NAME.items() if metric.scale == "points"}  # the rest are on a 0-1 scale
NONE = "No comparisons (no runs besides the baseline, or no common problems)."
# Arm B vs arm A on n problems: diff = b - a with its interval, df and p; per_seed: b - a seed by seed (same seeds).
Paired = namedtuple("Paired", "n seeds_a seeds_b a b diff ci_low ci_high df p_value per_seed")


def join_rows(frames: Mapping[Hashable, pd.DataFrame]) -> dict[Hashable, pd.DataFrame]:
    """Each run's rows of the common problem ids, sorted; a common id with another gold answer or reference: refused."""
    ids = {label: frame["id"].astype(str) for label, frame in frames.items()}  # CSV may give numbers
    for label, s in ids.items():
        if s.duplicated().any():
            raise ValueError(f"run {label!r} has duplicate problem ids (e.g. {s[s.duplicated()].iloc[0]!r})")
    common = sorted(set.intersection(*(set(s) for s in ids.values()))) if ids else []
    if not common:
        raise ValueError(f"no problem ids in common across runs {list(frames)}")
    joined = {label: frame.assign(id=ids[label]).set_index("id").loc[common].reset_index()
              for label, frame in frames.items()}
    (first, head), *others = joined.items()
    for column in (c for c in GOLD if all(c in f for f in joined.values())):
        for label, frame in others:
            differ = head[column].astype(str).to_numpy() != frame[column].astype(str).to_numpy()
            if differ.any():
                raise ValueError(f"problem {head['id'].iloc[int(np.argmax(differ))]!r} has a different gold "
                                 f"{column} in runs {first!r} and {label!r}: they were scored on different data")
    return joined


def linearised(values: np.ndarray) -> np.ndarray:
    """(seeds, n) values, NaN = skipped -> per-row values averaging to each seed's NaN-skipping mean (delta method)."""
    values = np.asarray(values, dtype=float)
    known = ~np.isnan(values)
    kept = known.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(known, values, 0.0).sum(axis=1, keepdims=True) / kept
        return mean + np.where(known, values - mean, 0.0) * values.shape[1] / kept


def arm_difference(a, b, confidence: float = CONFIDENCE) -> Paired:
    """B - A from (seeds, n) per-row values of the same problems: problems x seeds crossed random effects by the
    method of moments (a seed term per arm with S > 1, a problem term net of seed x problem noise), Satterthwaite df."""
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    n = a.shape[1]
    per_problem = b.mean(axis=0) - a.mean(axis=0)
    diff = float(b.mean() - a.mean())  # = mean of per_problem, without its rounding
    parts, noise = [], 0.0
    for y in (a, b):
        s, per_seed = len(y), y.mean(axis=1)
        if s > 1:  # a seed term, and the seed x problem noise (residual mean square / S) it already holds
            parts.append((float(per_seed.var(ddof=1)) / s, s - 1))
            resid = y - per_seed[:, None] - y.mean(axis=0)[None, :] + y.mean()
            noise += float((resid ** 2).sum()) / ((s - 1) * (n - 1)) / s if n > 1 else 0.0
    if n > 1:  # the problem term, net of that noise
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
    paired = " ".join(f"{d:+.4g}" for d in b.mean(axis=1) - a.mean(axis=1)) if len(a) == len(b) > 1 else ""
    return Paired(n, len(a), len(b), float(a.mean()), float(b.mean()), diff, low, high, df, p, paired)


def _arm_values(frames: Sequence[pd.DataFrame], metric: str, mask: np.ndarray | None = None) -> np.ndarray | None:
    """(seeds, n) values of one metric for an arm (None: undefined for some seed run)."""
    if metric == "acc":
        truth = [f["correct"].astype(str).str.strip().str.lower().isin(["true", "1", "1.0"]) for f in frames]
        y = 100.0 * np.stack(truth).astype(float)  # as read back from a CSV or built in memory; missing = wrong
        return y if mask is None else y[:, mask]
    if metric == "overall":
        parts = [_arm_values(frames, name) for name in OVERALL]
        if any(p is None for p in parts):
            return None
        weights = [2.0 if name == "cosine" else 1.0 for name in OVERALL]
        return 100.0 * (sum(w * p for w, p in zip(weights, parts)) - 1.0) / len(OVERALL)
    if not all(metric in f for f in frames):
        return None
    y = linearised(np.stack([f[metric].to_numpy(dtype=float) for f in frames]))
    return None if np.isnan(y).any() else y


def compare_runs(arms: Mapping[str, pd.DataFrame | Sequence[pd.DataFrame]], baseline: str, *,
                 by_group: bool = True, primary: bool = True, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per (arm vs baseline, metric, group) on the common problems; a metric undefined for a run: no row."""
    if baseline not in arms:
        raise ValueError(f"baseline {baseline!r} is not one of the runs {list(arms)}")
    arms = {label: [arm] if isinstance(arm, pd.DataFrame) else list(arm) for label, arm in arms.items()}
    names = {(label, i): label if len(arm) == 1 else f"{label} (seed run {i + 1})"
             for label, arm in arms.items() for i in range(len(arm))}
    joined = join_rows({names[label, i]: f for label, arm in arms.items() for i, f in enumerate(arm)})
    frames = {label: [joined[names[label, i]] for i in range(len(arm))] for label, arm in arms.items()}
    base = frames[baseline]
    groups = {"all": None, **({BY_NAME[key].where: mask.to_numpy() for key, mask in accuracy_groups(base[0]).items()
                               if key != "acc"} if by_group else {})}  # the groups ``metrics`` logs
    wanted = [("acc", g, m) for g, m in groups.items() if m is None or m.any()]
    wanted += [(name, "all", None) for name in (*EXPLANATION, "overall")]
    rows = []
    for run, other in frames.items():
        for metric, group, mask in [] if run == baseline else wanted:
            a, b = _arm_values(base, metric, mask), _arm_values(other, metric, mask)
            if a is None or b is None or not a.shape[1]:
                continue
            family = PRIMARY if primary and (metric, group) == ("acc", "all") else EXPLORATORY
            rows.append({**arm_difference(a, b, confidence)._asdict(), "run": run, "baseline": baseline,
                         "metric": metric, "group": group, "family": family})
    return decide(pd.DataFrame(rows, columns=COLUMNS))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values: sorted p times (m - rank), kept monotone, at most 1."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    out = np.empty_like(p)
    out[order] = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    return out


def decide(table: pd.DataFrame) -> pd.DataFrame:
    """``p_holm`` over the primary rows with a p, and the one significance rule."""
    table = table.assign(p_holm=np.nan)
    primary = (table["family"] == PRIMARY).to_numpy() & table["p_value"].notna().to_numpy()
    table.loc[primary, "p_holm"] = holm(table.loc[primary, "p_value"].to_numpy(dtype=float))
    decided = np.where(primary, table["p_holm"], table["p_value"]).astype(float)
    table["significant"] = np.nan_to_num(decided, nan=1.0) < ALPHA
    return table


def n_tests(table: pd.DataFrame) -> tuple[int, int]:
    """(primary, exploratory) tests in a table: what the header says was run."""
    primary = int((table["family"] == PRIMARY).sum())
    return primary, len(table) - primary


def _num(value: float, metric: str, signed: bool = False) -> str:
    """Points with one decimal, 0-1 metrics with three; a real minus sign for prose."""
    return f"{value:{'+' if signed else ''}.{1 if metric in POINTS else 3}f}".replace("-", "\u2212")


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


def _display(table: pd.DataFrame, labels: Mapping[str, str] | None) -> pd.DataFrame:
    """Every row as strings: the markdown table, and what the terminal table and the plot pick from."""
    name = dict(labels or {})
    return pd.DataFrame([{
        "comparison": f"{name.get(r.run, r.run)} vs {name.get(r.baseline, r.baseline)}", "family": r.family,
        "metric": r.metric, "group": r.group, "n": str(r.n), "seeds": f"{r.seeds_a}/{r.seeds_b}",
        "a": _num(r.a, r.metric), "b": _num(r.b, r.metric), "diff": _num(r.diff, r.metric, True),
        "95% CI": f"[{_num(r.ci_low, r.metric, True)}, {_num(r.ci_high, r.metric, True)}]", "p": p_text(r.p_value),
        "p_holm": p_text(r.p_holm), "sig": "*" if r.significant else "", "per-seed diffs": r.per_seed or ""}
        for r in table.itertuples()], columns=["comparison", "family", "metric", "group", "n", "seeds", "a", "b",
                                               "diff", "95% CI", "p", "p_holm", "sig", "per-seed diffs"])


def to_text(table: pd.DataFrame, labels: Mapping[str, str] | None = None) -> str:
    """The terminal table: per comparison, accuracy and the overall difference; ``*``: a significant primary."""
    shown = _display(table, labels)[(table["group"] == "all").to_numpy()]
    acc = shown[shown["metric"] == "acc"]
    if acc.empty:
        return NONE
    overall = shown[shown["metric"] == "overall"]
    overall = dict(zip(overall["comparison"], overall["diff"] + " " + overall["95% CI"]))
    return pd.DataFrame({
        "comparison": acc["comparison"], "n": acc["n"], "seeds": acc["seeds"], "acc a": acc["a"], "acc b": acc["b"],
        "acc diff [95% CI]": acc["diff"] + " " + acc["95% CI"], "p": acc["p"],
        "p_holm": acc["p_holm"] + np.where((acc["family"] == PRIMARY) & (acc["sig"] == "*"), " *", ""),
        "overall diff [95% CI]": [overall.get(c, "") for c in acc["comparison"]],
    }).to_markdown(index=False, tablefmt="simple", disable_numparse=True)


def to_markdown(table: pd.DataFrame, labels: Mapping[str, str] | None = None) -> str:
    """Markdown table, a sentence per primary and per significant exploratory row, the rest summarised."""
    if table.empty:
        return NONE + "\n"
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
        p = (f", p = {s['p']}" if s["p"] else "") + (f", p_holm = {s['p_holm']}" if s["p_holm"] else "")
        seeds = f", {r.seeds_a}/{r.seeds_b} seeds" if max(r.seeds_a, r.seeds_b) > 1 else ""
        verdict = ("cannot tell apart at 5 %" if not r.significant else "significant at 5 %"
                   + (" (Holm-adjusted)" if r.family == PRIMARY else " (exploratory, unadjusted)"))
        unit = " points" if r.metric in POINTS else ""
        lines.append(f"- {s['comparison']}: {what} {s['diff']}{unit} {s['95% CI']}{p}, n = {r.n}{seeds} "
                     f"\u2014 {verdict}.")
    lines += [f"- {pair}: cannot tell apart at 5 % (exploratory) for {', '.join(w)}." for pair, w in quiet.items()]
    return "\n".join(lines) + "\n"


def forest_plot(table: pd.DataFrame, path: str | Path, labels: Mapping[str, str] | None = None) -> Path:
    """Differences with intervals per comparison and metric (red: significant): a points panel and a 0-1 panel."""
    rows = table[table["group"] == "all"]
    points = rows["metric"].isin(POINTS)
    panels = [(t, part) for t, part in (("accuracy, overall (points)", rows[points]),
                                        ("explanation metrics (0\u20131 scale)", rows[~points])) if len(part)]
    if not panels:
        raise ValueError("nothing to plot: no group == 'all' rows")
    fig = Figure(figsize=(6.5 * len(panels), 1.2 + 0.4 * max(len(p) for _, p in panels)), layout="tight")
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, part) in zip(axes[0], panels):
        y = np.arange(len(part))[::-1]
        d, low, high = (part[c].to_numpy(dtype=float) for c in ("diff", "ci_low", "ci_high"))
        ax.errorbar(d, y, xerr=np.clip([d - low, high - d], 0, None), fmt="none", ecolor="tab:gray", capsize=3)
        ax.scatter(d, y, c=np.where(part["significant"], "tab:red", "tab:gray"), zorder=3)
        ax.axvline(0, color="black", linestyle="--", linewidth=1)
        ticks = [f"{pair}: {LABELS[m]}" for pair, m in zip(_display(part, labels)["comparison"], part["metric"])]
        ax.set_yticks(y, [t if len(t) <= 70 else f"{t[:40]}\u2026{t[-29:]}" for t in ticks])
        ax.set(title=title, xlabel=f"run \u2212 baseline, {CONFIDENCE:.0%} interval (red: significant)")
        ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=110)
    return Path(path)
