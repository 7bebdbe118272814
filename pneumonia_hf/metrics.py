"""Classification metrics (scikit-learn underneath), threshold rules and calibration error."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

METRIC_NAMES = ("accuracy", "recall", "specificity", "precision", "f1", "roc_auc", "pr_auc", "ece", "brier")


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> float:
    """ECE: bin-size weighted |accuracy - confidence| over equal-width bins of P(pneumonia)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(ece)


def binary_metrics(y_true, prob, threshold: float = 0.5) -> dict[str, float]:
    """Recall (sensitivity), specificity, precision, F1, accuracy, ROC/PR AUC, ECE, Brier and the confusion matrix."""
    y, p = np.asarray(y_true).astype(int), np.asarray(prob, float)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y)) == 2
    return {
        "n": int(len(y)),
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(skm.average_precision_score(y, p)) if both else float("nan"),
        "ece": expected_calibration_error(y, p),
        "brier": float(skm.brier_score_loss(y, p)),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def choose_threshold(y_true, prob, rule: str = "youden", target_sensitivity: float = 0.97) -> float:
    """Operating threshold from (out-of-fold) predictions.

    youden: maximise sensitivity + specificity - 1.  sensitivity: the highest threshold (so the highest
    specificity) whose sensitivity is still >= target_sensitivity.
    """
    y, p = np.asarray(y_true).astype(int), np.asarray(prob, float)
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)  # every candidate, or the rule may skip the best
    thr = np.clip(thr, 0.0, 1.0)  # roc_curve's first threshold is +inf
    if rule == "youden":
        i = int(np.argmax(tpr - fpr))
    elif rule == "sensitivity":
        ok = np.nonzero(tpr >= target_sensitivity)[0]
        i = int(ok[0])  # thresholds decrease along the curve: the first one reaching the target is the highest
    else:
        raise ValueError(f"unknown threshold rule {rule!r}")
    return float(thr[i])


def summarize(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of each scalar metric over folds."""
    out = {}
    for k in METRIC_NAMES:
        vals = np.array([m[k] for m in per_fold], float)
        out[k] = {"mean": float(np.nanmean(vals)), "std": float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else 0.0}
    return out


def format_mean_std(summary: dict[str, dict[str, float]], keys=METRIC_NAMES, pct: bool = False) -> dict[str, str]:
    """'0.981 ± 0.004' strings for tables."""
    f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.3f}")
    return {k: f"{f(summary[k]['mean'])} ± {f(summary[k]['std'])}" for k in keys}


def with_shifted(y: np.ndarray, p: np.ndarray, shifted: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of clean predictions stacked with the same images' perturbed predictions."""
    return np.concatenate([y] * (1 + len(shifted))), np.concatenate([p, *shifted])


def fit_platt(y_true: np.ndarray, prob: np.ndarray) -> tuple[float, float]:
    """Platt scaling (a, b) so that sigmoid(a * logit(p) + b) is calibrated on these predictions."""
    from sklearn.linear_model import LogisticRegression

    logit = np.log(np.clip(prob, 1e-7, 1 - 1e-7) / np.clip(1 - prob, 1e-7, 1)).reshape(-1, 1)
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(logit, np.asarray(y_true).astype(int))
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def apply_platt(prob: np.ndarray, a: float, b: float) -> np.ndarray:
    """Calibrated probabilities sigmoid(a * logit(p) + b)."""
    p = np.clip(np.asarray(prob, float), 1e-7, 1 - 1e-7)
    return 1 / (1 + np.exp(-(a * np.log(p / (1 - p)) + b)))
