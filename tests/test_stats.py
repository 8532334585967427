"""Paired comparisons: hand-computed McNemar and accuracy, bootstrap CIs against direct numpy/scipy
bootstraps, degenerate cases without warnings, the row join, NaN handling and the report/plot outputs."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from sciqa import metrics, stats

N_PROBLEMS = 200


def known_pair(repeat: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """200 problems: 100 both right, 30 only b right, 10 only a right, 60 both wrong (tiled `repeat` times)."""
    a, b = np.zeros(N_PROBLEMS, bool), np.zeros(N_PROBLEMS, bool)
    a[:100] = b[:100] = True
    b[100:130] = True
    a[130:140] = True
    return np.tile(a, repeat), np.tile(b, repeat)


def rows(n: int, seed: int, *, correct=None, shift: float = 0.0) -> pd.DataFrame:
    """A per-row score table like evaluation writes, with NaN ROUGE-L/METEOR for empty predictions."""
    rng = np.random.default_rng(seed)
    correct = rng.random(n) < 0.6 if correct is None else np.asarray(correct)
    frame = pd.DataFrame({
        "id": [f"p{i:04d}" for i in range(n)], "correct": correct, "answer": 0,
        "answer_index": pd.array(np.where(correct, 0, 1), dtype="Int64"),
        "subject": np.array(["natural science", "social science", "language science"])[np.arange(n) % 3],
        "grade": [f"grade{i % 12 + 1}" for i in range(n)],
        "hint": np.where(np.arange(n) % 5 == 0, "a hint", ""), "has_image": np.arange(n) % 2 == 0,
    })
    for name in stats.EXPLANATION:
        frame[name] = np.clip(rng.normal(0.5 + shift, 0.15, n), 0, 1)
    frame.loc[rng.random(n) < 0.15, ["rougeL", "meteor"]] = np.nan
    return frame


# --------------------------------------------------------------------------- accuracy


def test_known_accuracy_difference_counts_and_exact_mcnemar():
    a, b = known_pair()
    result = stats.paired_accuracy(a, b)
    assert (result.n, result.b01, result.b10) == (200, 30, 10)
    assert (result.a, result.b, result.diff) == (55.0, 65.0, 10.0)
    assert result.p_value == scipy.stats.binomtest(30, 40, 0.5).pvalue
    by_hand = min(1.0, 2 * sum(math.comb(40, k) for k in range(11)) / 2**40)  # two-sided, symmetric
    assert result.p_value == pytest.approx(by_hand, rel=1e-12)
    assert result.ci_low < 10.0 < result.ci_high


def test_accuracy_ci_matches_direct_numpy_and_scipy_bootstraps():
    a, b = known_pair()
    result = stats.paired_accuracy(a, b)
    d = 100.0 * (b.astype(float) - a.astype(float))
    boots = d[np.random.default_rng(12345).integers(0, len(d), (20000, len(d)))].mean(axis=1)
    low, high = np.percentile(boots, [2.5, 97.5])
    assert result.ci_low == pytest.approx(low, abs=0.6) and result.ci_high == pytest.approx(high, abs=0.6)
    ref = scipy.stats.bootstrap((100.0 * a, 100.0 * b), lambda x, y, axis: y.mean(axis) - x.mean(axis),
                                paired=True, method="percentile", n_resamples=5000, rng=1).confidence_interval
    assert result.ci_low == pytest.approx(ref.low, abs=0.6) and result.ci_high == pytest.approx(ref.high, abs=0.6)


def test_ci_is_seeded_and_shrinks_with_n():
    a, b = known_pair()
    first, again = stats.paired_accuracy(a, b, seed=3), stats.paired_accuracy(a, b, seed=3)
    other = stats.paired_accuracy(a, b, seed=4)
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)
    big = stats.paired_accuracy(*known_pair(repeat=10), seed=3)
    assert big.diff == pytest.approx(10.0)
    assert big.ci_high - big.ci_low < 0.5 * (first.ci_high - first.ci_low)  # ~ 1/sqrt(10)


def test_identical_runs_give_a_zero_width_ci_without_warnings():
    a, _ = known_pair()
    frame = rows(150, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        acc = stats.paired_accuracy(a, a)
        metric = stats.paired_metric(frame["bleu1"], frame["bleu1"])
        overall = stats.paired_overall(frame, frame)
        all_right = stats.paired_accuracy(np.zeros(50, bool), np.ones(50, bool))
    assert (acc.diff, acc.ci_low, acc.ci_high, acc.p_value, acc.b01, acc.b10) == (0.0, 0.0, 0.0, 1.0, 0, 0)
    assert (metric.diff, metric.ci_low, metric.ci_high) == (0.0, 0.0, 0.0)
    assert (overall.diff, overall.ci_low, overall.ci_high) == (0.0, 0.0, 0.0)
    assert (all_right.diff, all_right.ci_low, all_right.ci_high) == (100.0, 100.0, 100.0)


def test_missing_correct_counts_as_wrong():
    result = stats.paired_accuracy(pd.array([True, None, False], dtype="boolean"), [True, True, False])
    assert (result.a, result.b01, result.b10) == (pytest.approx(100 / 3), 1, 0)


# --------------------------------------------------------------------------- continuous metrics


def test_paired_metric_drops_rows_nan_on_either_side():
    a = np.array([0.1, np.nan, 0.3, 0.4, 0.5, 0.6])
    b = np.array([0.2, 0.9, np.nan, 0.6, 0.5, 0.9])
    result = stats.paired_metric(a, b, n_resamples=2000)
    assert result.n == 4
    assert result.diff == pytest.approx((0.1 + 0.2 + 0.0 + 0.3) / 4)
    assert (result.a, result.b) == (pytest.approx(0.4), pytest.approx(0.55))
    assert result.p_value is None and result.ci_low <= result.diff <= result.ci_high
    shifted = stats.paired_metric(a, a + 0.25)  # every difference 0.25 up to rounding: no spread
    assert shifted.ci_low == shifted.ci_high == shifted.diff == pytest.approx(0.25)
    empty = stats.paired_metric([np.nan], [1.0])
    assert empty.n == 0 and math.isnan(empty.diff)
    with pytest.raises(ValueError, match="same 1-d shape"):
        stats.paired_metric([1.0, 2.0], [1.0])


def test_paired_overall_point_estimate_is_the_run_level_score_and_ci_matches_direct_bootstrap():
    a, b = rows(150, 1), rows(150, 2, shift=0.05)
    result = stats.paired_overall(a, b, n_resamples=4000)
    run_a, run_b = (metrics.summarize_explanations(f)["overall"] for f in (a, b))
    assert result.n == 150
    assert (result.a, result.b) == (pytest.approx(run_a, rel=1e-12), pytest.approx(run_b, rel=1e-12))
    assert result.diff == pytest.approx(run_b - run_a, rel=1e-12)

    def overall(x: np.ndarray) -> np.ndarray:  # x: (resamples, rows, 5) with NaN, nanmean per column
        m = np.nanmean(x, axis=1)
        return 100 * (m[:, :4].sum(axis=1) + 2 * m[:, 4] - 1) / 5

    x, y = (f[list(stats.EXPLANATION)].to_numpy(float) for f in (a, b))
    idx = np.random.default_rng(7).integers(0, 150, (4000, 150))
    low, high = np.percentile(overall(y[idx]) - overall(x[idx]), [2.5, 97.5])
    width = high - low
    assert result.ci_low == pytest.approx(low, abs=0.05 * width)
    assert result.ci_high == pytest.approx(high, abs=0.05 * width)


# --------------------------------------------------------------------------- joining and the comparison table


def test_join_rows_keeps_common_ids_in_sorted_order_and_counts_the_rest():
    kd = pd.DataFrame({"id": ["3", "1", "2", "9"], "x": [30, 10, 20, 90]})
    golden = pd.DataFrame({"id": [2, 3, 1, 7, 8], "x": [2, 3, 1, 7, 8]})  # ids read back from a CSV as ints
    joined = stats.join_rows({"kd": kd, "golden": golden})
    assert joined.n == 3 and joined.dropped == {"kd": 1, "golden": 2}
    assert list(joined.frames["kd"]["id"]) == list(joined.frames["golden"]["id"]) == ["1", "2", "3"]
    assert list(joined.frames["kd"]["x"]) == [10, 20, 30] and list(joined.frames["golden"]["x"]) == [1, 2, 3]
    with pytest.raises(ValueError, match="'golden'.*duplicate"):
        stats.join_rows({"kd": kd, "golden": pd.DataFrame({"id": ["1", "1"]})})
    with pytest.raises(ValueError, match="no problem ids in common"):
        stats.join_rows({"kd": kd, "golden": pd.DataFrame({"id": ["5", "6"]})})


def study_runs(n: int = 240) -> dict[str, pd.DataFrame]:
    """golden; kd far more accurate, BLEU-1 higher, METEOR lower, same cosine; base identical to golden."""
    golden = rows(n, 10, correct=np.arange(n) % 2 == 0)
    kd = rows(n, 10, correct=np.arange(n) % 10 != 0)
    kd["bleu1"], kd["meteor"] = golden["bleu1"] + 0.1, golden["meteor"] - 0.1
    return {"golden": golden, "kd": kd.iloc[::-1], "base": golden.copy()}


def test_compare_runs_groups_and_significance():
    runs = study_runs()
    table = stats.compare_runs(runs, "golden", n_resamples=2000)
    assert list(table.columns) == stats.COLUMNS
    assert set(table["run"]) == {"kd", "base"} and set(table["baseline"]) == {"golden"}
    golden = runs["golden"]
    text, image = golden["hint"] != "", golden["has_image"]
    expected_n = {"all": 240, "subject=natural science": 80, "subject=social science": 80,
                  "subject=language science": 80, "context=text": text.sum(), "context=image": image.sum(),
                  "context=none": (~text & ~image).sum(), "grade=1-6": 120, "grade=7-12": 120}
    acc = table[(table["run"] == "kd") & (table["metric"] == "acc")].set_index("group")
    assert acc["n"].to_dict() == expected_n
    keys = {"all": "acc", "subject=natural science": "acc_natural", "subject=social science": "acc_social",
            "subject=language science": "acc_language", "context=text": "acc_txt", "context=image": "acc_img",
            "context=none": "acc_no", "grade=1-6": "acc_g1_6", "grade=7-12": "acc_g7_12"}
    for run, column in (("golden", "a"), ("kd", "b")):  # same groups as the run-level accuracy breakdown
        breakdown = metrics.accuracy_breakdown(runs[run])
        assert {g: pytest.approx(breakdown[k]) for g, k in keys.items()} == acc[column].to_dict()
    by_metric = table[table["group"] == "all"].set_index(["run", "metric"])
    assert by_metric.loc[("kd", "acc"), "significant"] and by_metric.loc[("kd", "acc"), "p_value"] < 0.05
    assert by_metric.loc[("kd", "bleu1"), "significant"] and by_metric.loc[("kd", "bleu1"), "ci_low"] > 0
    assert by_metric.loc[("kd", "meteor"), "significant"] and by_metric.loc[("kd", "meteor"), "ci_high"] < 0
    assert not by_metric.loc[("kd", "cosine"), "significant"]
    assert not table[table["run"] == "base"]["significant"].any()
    assert by_metric.loc[("kd", "rougeL"), "n"] == (runs["kd"]["rougeL"].notna() & golden["rougeL"].notna()).sum()
    is_acc = table["metric"] == "acc"
    assert (table["significant"][is_acc] == (table["p_value"][is_acc] < 0.05)).all()
    ci_excludes_zero = (table["ci_low"] > 0) | (table["ci_high"] < 0)
    assert (table["significant"][~is_acc] == ci_excludes_zero[~is_acc]).all()


def test_accuracy_significance_follows_mcnemar_not_the_ci():
    golden = rows(100, 0, correct=np.zeros(100, bool))
    kd = golden.assign(correct=np.arange(100) < 5)  # 5 discordant pairs, all one way: p = 2 / 2**5
    row = stats.compare_runs({"golden": golden, "kd": kd}, "golden", by_group=False).iloc[0]
    assert (row["metric"], row["b"], row["diff"], row["p_value"]) == ("acc", 5.0, 5.0, 0.0625)
    assert row["ci_low"] > 0 and not row["significant"]


def test_compare_runs_leaves_out_empty_groups_and_can_skip_groups():
    runs = {k: f.assign(grade="grade4") for k, f in study_runs(60).items()}
    table = stats.compare_runs(runs, "golden", n_resamples=500)
    assert "grade=1-6" in set(table["group"]) and "grade=7-12" not in set(table["group"])
    flat = stats.compare_runs(runs, "golden", n_resamples=500, by_group=False)
    assert set(flat["group"]) == {"all"} and len(flat) == 2 * 7
    with pytest.raises(ValueError, match="baseline 'nope'"):
        stats.compare_runs(runs, "nope")


def test_a_difference_below_the_reported_precision_is_never_significant():
    runs = study_runs(60)
    runs["base"] = runs["golden"].assign(bleu1=runs["golden"]["bleu1"] + 1e-5, cosine=runs["golden"]["cosine"] + 0.01)
    table = stats.compare_runs(runs, "golden", n_resamples=500, by_group=False).set_index(["run", "metric"])
    assert table.loc[("base", "bleu1"), "ci_low"] > 0 and not table.loc[("base", "bleu1"), "significant"]
    assert table.loc[("base", "cosine"), "significant"]


def test_metrics_undefined_for_a_run_are_left_out_not_nan():
    """A run of empty answers has no ROUGE-L or METEOR (they skip empty predictions), hence no overall."""
    runs = study_runs(60)
    runs["kd"] = runs["kd"].assign(rougeL=np.nan, meteor=np.nan)
    table = stats.compare_runs(runs, "golden", n_resamples=500, by_group=False)
    assert set(table[table["run"] == "kd"]["metric"]) == {"acc", "bleu1", "bleu4", "cosine"}
    assert table[["diff", "ci_low", "ci_high"]].notna().all().all()


# --------------------------------------------------------------------------- reports


def test_markdown_and_text_reports():
    table = stats.compare_runs(study_runs(), "golden", n_resamples=2000)
    md = stats.to_markdown(table, {"kd": "kd (pkv)"})
    kd_acc = table[(table["run"] == "kd") & (table["metric"] == "acc") & (table["group"] == "all")].iloc[0]
    assert f"- kd (pkv) vs golden: accuracy +{kd_acc['diff']:.1f} points [+{kd_acc['ci_low']:.1f}, " in md
    assert "n = 240 \u2014 significant at 5 %." in md
    assert "- base vs golden: accuracy +0.0 points [+0.0, +0.0], p = 1, n = 240 \u2014 not significant at 5 %." in md
    assert "kd (pkv) vs golden: BLEU-1 +0.100 [+0.100, +0.100], n = 240 \u2014 significant at 5 %." in md
    assert "kd (pkv) vs golden: METEOR \u22120.100" in md
    assert "not significant at 5 % for" in md and "cosine" in md.split("not significant at 5 % for")[1]
    assert md.count("| kd (pkv) vs golden |") == (table["run"] == "kd").sum()
    text = stats.to_text(table).splitlines()
    assert text[0].split()[:4] == ["comparison", "metric", "group", "n"]
    assert len(text) == len(table) + 2 and text[0].index("metric") == text[2].index("acc")
    assert "No comparisons" in stats.to_markdown(table.iloc[:0])


def test_forest_plot_writes_png(tmp_path):
    table = stats.compare_runs(study_runs(90), "golden", n_resamples=500)
    path = stats.forest_plot(table, tmp_path / "forest.png", labels={"kd": "KD"})
    assert path == tmp_path / "forest.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
