"""PNG plots of a run or an evaluation: learning curves, ROC, PR, confusion matrix, reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(histories: dict[str, list[dict]], path: str | Path) -> Path:
    """One column per fold: train/validation loss and validation ROC AUC per epoch."""
    plt = _plt()
    n = max(len(histories), 1)
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 5.5), squeeze=False, sharex=True)
    for j, (name, hist) in enumerate(histories.items()):
        ep = [h["epoch"] + 1 for h in hist]
        axes[0, j].plot(ep, [h["train_loss"] for h in hist], label="train")
        if hist and "val_loss" in hist[0]:
            axes[0, j].plot(ep, [h["val_loss"] for h in hist], label="validation")
        axes[0, j].set_title(name)
        axes[0, j].legend(fontsize=7)
        if hist and "val_roc_auc" in hist[0]:
            axes[1, j].plot(ep, [h["val_roc_auc"] for h in hist], color="tab:green")
        axes[1, j].set_xlabel("epoch")
    axes[0, 0].set_ylabel("loss")
    axes[1, 0].set_ylabel("validation ROC AUC")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_evaluation(y_true, prob, threshold: float, out_dir: str | Path, title: str = "") -> list[Path]:
    """ROC, PR, confusion matrix (at `threshold`) and reliability diagram as four PNGs in out_dir."""
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y, p = np.asarray(y_true).astype(int), np.asarray(prob, float)
    paths = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        paths.append(out_dir / name)

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    RocCurveDisplay.from_predictions(y, p, ax=ax, name="model")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_title(f"ROC {title}".strip())
    save(fig, "roc.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    PrecisionRecallDisplay.from_predictions(y, p, ax=ax, name="model")
    ax.set_title(f"Precision-recall {title}".strip())
    save(fig, "pr.png")

    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ConfusionMatrixDisplay.from_predictions(y, (p >= threshold).astype(int), display_labels=["NORMAL", "PNEUMONIA"],
                                            ax=ax, colorbar=False, cmap="Blues")
    ax.set_title(f"threshold {threshold:.3f}")
    save(fig, "confusion_matrix.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    CalibrationDisplay.from_predictions(y, p, n_bins=10, ax=ax, name="model")
    ax.set_title(f"Reliability {title}".strip())
    save(fig, "reliability.png")
    return paths
