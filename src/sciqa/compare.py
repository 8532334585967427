"""KD vs golden, side by side: a table of every scored adapter and the base model, and plots.

Reads only what the child runs logged (metrics and loss histories), so the comparison can be
rebuilt from MLflow alone; it is logged to the active (parent) run under ``compare/`` and ``plots/``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

METRICS = ["acc", "acc_natural", "acc_social", "acc_language", "acc_txt", "acc_img", "acc_no", "acc_g1_6",
           "acc_g7_12", "unmapped_rate", "bleu1", "bleu4", "rougeL", "meteor", "cosine", "overall"]
BARS = ["acc", "bleu1", "rougeL", "meteor", "cosine", "overall"]


def comparison_table(base: str, trained: dict, scored: dict):
    """One row per (variant, target) plus the untuned base model, with the runs they come from."""
    import mlflow
    import pandas as pd

    def row(variant, target, score_run, train_run=""):
        m = mlflow.get_run(score_run).data.metrics
        t = mlflow.get_run(train_run).data.metrics if train_run else {}
        return {"variant": variant, "target": target, **{k: m.get(k) for k in METRICS},
                "final_train_loss": t.get("train_loss"), "final_val_loss": t.get("val_loss"),
                "score_run": score_run, "train_run": train_run}

    rows = [row("base", "-", base)]
    rows += [row(v, "kd" if kd else "golden", scored[(v, kd)], trained[(v, kd)]) for (v, kd) in scored]
    return pd.DataFrame(rows)


def plot_losses(trained: dict, path: Path) -> Path:
    """Train and validation loss per epoch, KD vs golden, one panel per variant, shared axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow import MlflowClient

    client = MlflowClient()
    variants = list(dict.fromkeys(v for v, _ in trained))
    fig, axes = plt.subplots(1, len(variants), figsize=(5 * len(variants), 3.8), sharey=True, squeeze=False)
    for ax, variant in zip(axes[0], variants):
        for kd, color in ((False, "tab:blue"), (True, "tab:orange")):
            run_id = trained[(variant, kd)]
            for metric, style in (("train_loss", "-"), ("val_loss", "--")):
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


def plot_metrics(table, path: Path) -> Path:
    """Grouped bars of the headline metrics per (variant, target)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.variant}/{r.target}" if r.target != "-" else "base" for r in table.itertuples()]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels) * len(BARS) / 3), 4))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        values = [table.iloc[i][k] if k in ("acc", "overall") else 100 * (table.iloc[i][k] or 0) for k in BARS]
        ax.bar([j + i * width for j in range(len(BARS))], [v if v == v else 0 for v in values], width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(BARS))],
                  ["accuracy %", "BLEU-1 x100", "ROUGE-L x100", "METEOR x100", "cosine x100", "overall"])
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare(base: str, trained: dict, scored: dict, teacher_run: str = "") -> str:
    """Build, log and return (as markdown) the comparison of the active parent run."""
    import mlflow

    table = comparison_table(base, trained, scored)
    markdown = table.drop(columns=["score_run", "train_run"]).to_markdown(index=False, floatfmt=".3f")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        table.to_csv(d / "comparison.csv", index=False)
        (d / "comparison.md").write_text(f"teacher run: {teacher_run or '(csv)'}\n\n{markdown}\n")
        mlflow.log_artifacts(tmp, "compare")
        mlflow.log_artifact(str(plot_losses(trained, d / "loss_curves.png")), "plots")
        mlflow.log_artifact(str(plot_metrics(table, d / "metrics.png")), "plots")
    for r in table.itertuples():
        if r.target != "-" and r.acc is not None:
            mlflow.log_metric(f"acc_{r.variant}_{r.target}", r.acc)
    return markdown
