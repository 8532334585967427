"""Paired comparisons of arms: one seed against hand-computed paired t statistics, several seeds as
replicates (mean over seeds, the seed term, per-seed differences), linearised NaN-skipping metrics and
the overall score equal to the runs' own values, the row join and the gold check, Holm and the one
significance rule, and the report/plot outputs."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from sciqa.eval import metrics, stats

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


# --------------------------------------------------------------------------- the model


def test_one_seed_accuracy_is_a_paired_t_on_problems_and_the_interval_inverts_it():
    a, b = known_pair()
    r = stats.arm_difference(100.0 * a, 100.0 * b)
    d = 100.0 * (b.astype(float) - a.astype(float))
    ref = scipy.stats.ttest_rel(100.0 * b, 100.0 * a)
    ci = ref.confidence_interval(0.95)
    assert (r.n, r.seeds_a, r.seeds_b, r.a, r.b, r.diff) == (200, 1, 1, 55.0, 65.0, 10.0)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9) and r.df == pytest.approx(199)
    assert (r.ci_low, r.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert r.per_seed == "" and d.mean() == r.diff
    for shift in (r.ci_low, r.ci_high):  # the interval's ends are exactly where the test reaches 5 %
        assert scipy.stats.ttest_1samp(d, shift).pvalue == pytest.approx(0.05, rel=1e-6)


def test_significance_and_interval_agree_where_mcnemar_and_a_bootstrap_did_not():
    """The review's case: b01 = 14, b10 = 5, n = 281 (bootstrap CI clear of zero, McNemar p = 0.064)."""
    a, b = np.zeros(281), np.zeros(281)
    b[:14], a[14:19], a[19:150], b[19:150] = 100, 100, 100, 100
    row = stats.compare_runs({"golden": pd.DataFrame({"id": range(281), "correct": a > 0}),
                              "kd": pd.DataFrame({"id": range(281), "correct": b > 0})}, "golden",
                             by_group=False).iloc[0]
    assert row["significant"] == (row["p_holm"] < 0.05) == (row["ci_low"] > 0 or row["ci_high"] < 0)


def test_seeds_are_replicates_mean_over_seeds_and_a_seed_term():
    rng = np.random.default_rng(0)
    a = 100.0 * (rng.random((3, 300)) < 0.5)
    b = 100.0 * (rng.random((3, 300)) < np.array([[0.55], [0.60], [0.65]]))
    r = stats.arm_difference(a, b)
    assert r.a == pytest.approx(a.mean(axis=1).mean()) and r.b == pytest.approx(b.mean(axis=1).mean())
    assert (r.seeds_a, r.seeds_b) == (3, 3)
    assert r.per_seed == " ".join(f"{d:+.4g}" for d in b.mean(axis=1) - a.mean(axis=1))
    def mse(y):  # seed x problem residual mean square
        resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
        return (resid ** 2).sum() / (2 * 299)

    seeds = [a.mean(axis=1).var(ddof=1) / 3, b.mean(axis=1).var(ddof=1) / 3]
    problems = max(0.0, (b.mean(axis=0) - a.mean(axis=0)).var(ddof=1) - mse(a) / 3 - mse(b) / 3) / 300
    var = sum(seeds) + problems
    df = var ** 2 / (sum(c ** 2 / 2 for c in seeds) + (problems ** 2 / 299 if problems else 0))
    half = scipy.stats.t.ppf(0.975, df) * var ** 0.5
    assert r.df == pytest.approx(df) and (r.ci_low, r.ci_high) == (pytest.approx(r.diff - half),
                                                                   pytest.approx(r.diff + half))
    assert r.df < 20  # dominated by the 2 + 2 seed df, not by the 299 problem df


def test_identical_arms_give_a_zero_width_interval_without_warnings():
    a, _ = known_pair()
    frame = rows(150, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = stats.compare_runs({"x": frame, "y": frame.copy()}, "x", by_group=False)
        all_right = stats.arm_difference(np.zeros(50), np.full(50, 100.0))
        same = stats.arm_difference(100.0 * a, 100.0 * a)
    assert (table[["diff", "ci_low", "ci_high"]] == 0).all().all() and (table["p_value"] == 1).all()
    assert (same.diff, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert (all_right.diff, all_right.ci_low, all_right.ci_high, all_right.p_value) == (100.0, 100.0, 100.0, 0.0)


def test_missing_correct_counts_as_wrong():
    golden = pd.DataFrame({"id": ["1", "2", "3"], "correct": pd.array([True, None, False], dtype="boolean")})
    kd = pd.DataFrame({"id": ["1", "2", "3"], "correct": [True, True, False]})
    row = stats.compare_runs({"golden": golden, "kd": kd}, "golden", by_group=False).iloc[0]
    assert row["a"] == pytest.approx(100 / 3) and row["b"] == pytest.approx(200 / 3)


# --------------------------------------------------------------------------- metrics that skip rows


def test_linearised_values_average_to_each_seeds_nan_skipping_mean():
    x = np.array([[0.1, np.nan, 0.3, 0.4], [np.nan, np.nan, np.nan, np.nan], [0.2, 0.2, 0.2, np.nan]])
    y = stats.linearised(x)
    assert y[0].mean() == pytest.approx(np.nanmean(x[0])) and y[2].mean() == pytest.approx(0.2)
    assert np.isnan(y[1]).all()  # no kept row: undefined, never 0


def test_explanation_metrics_and_overall_equal_the_runs_own_values():
    a, b = rows(150, 1), rows(150, 2, shift=0.05)
    table = stats.compare_runs({"a": a, "b": b}, "a", by_group=False).set_index("metric")
    for name in (*stats.EXPLANATION, "overall"):
        run_a, run_b = (metrics.summarize_explanations(f)[name] for f in (a, b))
        assert table.loc[name, "a"] == pytest.approx(run_a, rel=1e-12)
        assert table.loc[name, "b"] == pytest.approx(run_b, rel=1e-12)
        assert table.loc[name, "n"] == 150 and table.loc[name, "ci_low"] < table.loc[name, "diff"] < table.loc[
            name, "ci_high"]


def test_overall_interval_matches_a_direct_bootstrap():
    a, b = rows(400, 1), rows(400, 2, shift=0.02)
    row = stats.compare_runs({"a": a, "b": b}, "a", by_group=False).set_index("metric").loc["overall"]

    def overall(x: np.ndarray) -> np.ndarray:  # x: (resamples, rows, 5) with NaN, nanmean per column
        m = np.nanmean(x, axis=1)
        return 100 * (m[:, :4].sum(axis=1) + 2 * m[:, 4] - 1) / 5

    x, y = (f[list(stats.EXPLANATION)].to_numpy(float) for f in (a, b))
    idx = np.random.default_rng(7).integers(0, 400, (3000, 400))
    low, high = np.percentile(overall(y[idx]) - overall(x[idx]), [2.5, 97.5])
    width = high - low
    assert row["ci_low"] == pytest.approx(low, abs=0.1 * width)
    assert row["ci_high"] == pytest.approx(high, abs=0.1 * width)


# --------------------------------------------------------------------------- joining and the comparison table


def test_join_rows_keeps_common_ids_in_sorted_order():
    kd = pd.DataFrame({"id": ["3", "1", "2", "9"], "x": [30, 10, 20, 90]})
    golden = pd.DataFrame({"id": [2, 3, 1, 7, 8], "x": [2, 3, 1, 7, 8]})  # ids read back from a CSV as ints
    joined = stats.join_rows({"kd": kd, "golden": golden})
    assert list(joined["kd"]["id"]) == list(joined["golden"]["id"]) == ["1", "2", "3"]
    assert list(joined["kd"]["x"]) == [10, 20, 30] and list(joined["golden"]["x"]) == [1, 2, 3]
    with pytest.raises(ValueError, match="'golden'.*duplicate"):
        stats.join_rows({"kd": kd, "golden": pd.DataFrame({"id": ["1", "1"]})})
    with pytest.raises(ValueError, match="no problem ids in common"):
        stats.join_rows({"kd": kd, "golden": pd.DataFrame({"id": ["5", "6"]})})


def test_join_refuses_a_common_id_with_another_gold_answer_or_reference():
    one = pd.DataFrame({"id": ["1", "2", "3"], "answer": [0, 1, 2], "reference": ["r1", "r2", "r3"]})
    stats.join_rows({"a": one, "b": one.copy()})
    with pytest.raises(ValueError, match="problem '2' has a different gold answer in runs 'a' and 'b'"):
        stats.join_rows({"a": one, "b": one.assign(answer=[0, 0, 2])})
    with pytest.raises(ValueError, match="problem '3' has a different gold reference in runs 'a' and 'c'"):
        stats.join_rows({"a": one, "b": one.copy(), "c": one.assign(reference=["r1", "r2", "other"])})


def study_runs(n: int = 240) -> dict[str, pd.DataFrame]:
    """golden; kd far more accurate, BLEU-1 higher, METEOR lower, same cosine; base identical to golden."""
    golden = rows(n, 10, correct=np.arange(n) % 2 == 0)
    kd = rows(n, 10, correct=np.arange(n) % 10 != 0)
    kd["bleu1"], kd["meteor"] = golden["bleu1"] + 0.1, golden["meteor"] - 0.1
    return {"golden": golden, "kd": kd.iloc[::-1], "base": golden.copy()}


def test_compare_runs_groups_and_significance():
    runs = study_runs()
    table = stats.compare_runs(runs, "golden")
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
    primary = table["family"] == "primary"
    assert set(table[primary].set_index(["metric", "group"]).index) == {("acc", "all")}
    assert (table["significant"][primary] == (table["p_holm"][primary] < 0.05)).all()
    ci_excludes_zero = (table["ci_low"] > 0) | (table["ci_high"] < 0)
    assert (table["significant"][~primary] == ci_excludes_zero[~primary]).all()
    assert (table["significant"][~primary] == (table["p_value"][~primary] < 0.05)).all()
    assert table["p_holm"][~primary].isna().all()


def test_holm_adjusts_the_primary_rows_only_and_decides_on_unrounded_values():
    assert stats.holm(np.array([0.01, 0.04, 0.03])).tolist() == pytest.approx([0.03, 0.06, 0.06])
    table = pd.DataFrame({"family": ["primary", "primary", "exploratory"], "p_value": [0.0496, 0.2, 0.0496]})
    decided = stats.decide(table)
    assert decided["p_holm"].tolist()[:2] == pytest.approx([0.0992, 0.2]) and np.isnan(decided["p_holm"][2])
    assert decided["significant"].tolist() == [False, False, True]
    alone = stats.decide(table.iloc[[0]])
    assert bool(alone["significant"].iloc[0]) and stats.p_text(0.0496) == "0.0496"  # never printed as 0.05
    assert stats.p_text(0.0504) == "0.0504" and stats.p_text(0.41) == "0.41"


def test_compare_runs_leaves_out_empty_groups_and_can_skip_groups():
    runs = {k: f.assign(grade="grade4") for k, f in study_runs(60).items()}
    table = stats.compare_runs(runs, "golden")
    assert "grade=1-6" in set(table["group"]) and "grade=7-12" not in set(table["group"])
    flat = stats.compare_runs(runs, "golden", by_group=False)
    assert set(flat["group"]) == {"all"} and len(flat) == 2 * 7
    with pytest.raises(ValueError, match="baseline 'nope'"):
        stats.compare_runs(runs, "nope")


def test_no_minimum_effect_rule_a_consistent_tiny_difference_counts():
    runs = study_runs(60)
    runs["base"] = runs["golden"].assign(bleu1=runs["golden"]["bleu1"] + 1e-5)
    table = stats.compare_runs(runs, "golden", by_group=False).set_index(["run", "metric"])
    assert table.loc[("base", "bleu1"), "ci_low"] > 0 and table.loc[("base", "bleu1"), "significant"]


def test_metrics_undefined_for_a_run_are_left_out_not_nan():
    """A run of empty answers has no ROUGE-L or METEOR (they skip empty predictions), hence no overall."""
    runs = study_runs(60)
    runs["kd"] = runs["kd"].assign(rougeL=np.nan, meteor=np.nan)
    table = stats.compare_runs(runs, "golden", by_group=False)
    assert set(table[table["run"] == "kd"]["metric"]) == {"acc", "bleu1", "bleu4", "cosine"}
    assert table[["diff", "ci_low", "ci_high"]].notna().all().all()


# --------------------------------------------------------------------------- reports


def test_markdown_and_text_reports():
    table = stats.compare_runs(study_runs(), "golden")
    md = stats.to_markdown(table, {"kd": "kd (pkv)"})
    kd_acc = table[(table["run"] == "kd") & (table["metric"] == "acc") & (table["group"] == "all")].iloc[0]
    assert f"- kd (pkv) vs golden: accuracy +{kd_acc['diff']:.1f} points [+{kd_acc['ci_low']:.1f}, " in md
    assert "n = 240 \u2014 significant at 5 % (Holm-adjusted)." in md
    assert ("- base vs golden: accuracy +0.0 points [+0.0, +0.0], p = 1, p_holm = 1, n = 240 \u2014 cannot tell "
            "apart at 5 %.") in md
    assert "kd (pkv) vs golden: BLEU-1 +0.100 [+0.100, +0.100], p < 0.001" not in md  # p text is '<0.001'
    assert "kd (pkv) vs golden: METEOR \u22120.100" in md and "(exploratory, unadjusted)" in md
    assert "2 primary test(s), Holm-adjusted" in md and f"{len(table) - 2} exploratory test(s)" in md
    assert "cannot tell apart at 5 % (exploratory) for" in md
    assert md.count("| kd (pkv) vs golden |") == (table["run"] == "kd").sum()
    text = stats.to_text(table, {"kd": "kd (pkv)"}).splitlines()
    assert text[0].split()[:3] == ["comparison", "n", "seeds"] and "p_holm" in text[0]
    assert len(text) == 2 + 2  # header, rule, one line per comparison: no per-metric wall
    assert text[2].startswith("kd (pkv) vs golden") and text[2].rstrip().endswith("]")
    assert "*" in text[2] and "*" not in text[3]
    assert "No comparisons" in stats.to_markdown(table.iloc[:0])


def test_forest_plot_writes_png(tmp_path):
    table = stats.compare_runs(study_runs(90), "golden")
    path = stats.forest_plot(table, tmp_path / "forest.png", labels={"kd": "KD"})
    assert path == tmp_path / "forest.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
