"""Metrics against hand-computed values, threshold rules, calibration error, fold summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pneumonia_hf.metrics import METRIC_NAMES, binary_metrics, choose_threshold, expected_calibration_error, summarize

# 4 NORMAL, 5 PNEUMONIA; the hand-worked operating points:
#   t = 0.7: TP 3 (0.7, 0.8, 0.9), FP 0 -> sens 0.6, spec 1.0,  J = 0.60
#   t = 0.5: TP 4, FP 1 (0.6)          -> sens 0.8, spec 0.75, J = 0.55
#   t = 0.4: TP 5, FP 1                -> sens 1.0, spec 0.75, J = 0.75  <- Youden
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
P = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.5, 0.7, 0.8, 0.9])


def test_youden_threshold():
    assert choose_threshold(Y, P, "youden") == pytest.approx(0.4)


@pytest.mark.parametrize("target, expected", [(0.6, 0.7), (0.7, 0.5), (0.8, 0.5), (0.97, 0.4), (1.0, 0.4)])
def test_sensitivity_rule_picks_the_highest_threshold_meeting_the_target(target, expected):
    t = choose_threshold(Y, P, "sensitivity", target)
    assert t == pytest.approx(expected)
    assert binary_metrics(Y, P, t)["recall"] >= target


def test_threshold_rules_on_random_scores_match_brute_force():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    cands = np.unique(p)
    sens = np.array([(p[y == 1] >= t).mean() for t in cands])
    spec = np.array([(p[y == 0] < t).mean() for t in cands])
    t = choose_threshold(y, p, "youden")
    m = binary_metrics(y, p, t)
    assert m["recall"] + m["specificity"] == pytest.approx((sens + spec).max())
    for target in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97):
        t = choose_threshold(y, p, "sensitivity", target)
        assert t == pytest.approx(cands[sens >= target].max())
        assert binary_metrics(y, p, t)["recall"] >= target


def test_unknown_threshold_rule():
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_threshold(Y, P, "f1")


def test_binary_metrics_match_a_hand_computed_confusion_matrix():
    m = binary_metrics(Y, P, 0.5)  # p >= threshold is positive: 0.5 counts
    tn, fp, fn, tp = 3, 1, 1, 4
    assert m["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert m["n"] == 9 and m["threshold"] == 0.5
    assert m["accuracy"] == pytest.approx((tp + tn) / 9)
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # ROC AUC = P(score of a positive > score of a negative): 18 of the 20 pairs (0.4 and 0.5 lose to 0.6)
    assert m["roc_auc"] == pytest.approx(18 / 20)
    assert m["brier"] == pytest.approx(np.mean((P - Y) ** 2))
    assert 0 < m["pr_auc"] <= 1
    assert set(METRIC_NAMES) <= set(m)


def test_binary_metrics_with_one_class_has_nan_auc_not_an_error():
    m = binary_metrics([1, 1, 1], [0.2, 0.7, 0.9], 0.5)
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"]) and math.isnan(m["specificity"])
    assert m["recall"] == pytest.approx(2 / 3)


def test_ece_is_near_zero_for_calibrated_scores_and_large_for_confident_mistakes():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(p.shape) < p).astype(int)  # y ~ Bernoulli(p): perfectly calibrated
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(np.zeros(100), np.full(100, 0.99)) == pytest.approx(0.99)
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0  # both edges fall into valid bins


def test_summarize_gives_mean_and_sample_sd():
    folds = [binary_metrics(Y, P, t) for t in (0.4, 0.5, 0.7)]
    s = summarize(folds)
    assert set(s) == set(METRIC_NAMES)
    recalls = [1.0, 0.8, 0.6]
    assert s["recall"]["mean"] == pytest.approx(np.mean(recalls))
    assert s["recall"]["std"] == pytest.approx(np.std(recalls, ddof=1))


def test_platt_scaling_folded_into_the_head_matches_apply_platt():
    """Training folds Platt scaling into the final head; the model's probabilities must equal apply_platt's."""
    import torch

    from pneumonia_hf import PneumoniaCNN
    from pneumonia_hf.metrics import apply_platt, fit_platt

    torch.manual_seed(0)
    model = PneumoniaCNN(widths=[8, 16], depths=[1, 1], stem_width=8, image_size=32).eval()
    x = torch.randn(16, 1, 32, 32)
    with torch.no_grad():
        p = torch.sigmoid(model(x)).double().numpy()
        a, b = 2.5, -0.7
        model.head.weight.mul_(a)
        model.head.bias.mul_(a).add_(b)
        folded = torch.sigmoid(model(x)).double().numpy()
    np.testing.assert_allclose(folded, apply_platt(p, a, b), rtol=1e-4, atol=1e-6)
    # fit_platt recovers a known scaling from labels drawn at the calibrated probabilities
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.01, 0.99, 20000)
    y = rng.uniform(size=raw.size) < apply_platt(raw, 0.5, 1.0)
    a_hat, b_hat = fit_platt(y, raw)
    assert abs(a_hat - 0.5) < 0.05 and abs(b_hat - 1.0) < 0.1
