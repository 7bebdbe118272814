"""Losses for a single P(pneumonia) logit: BCE, class-weighted BCE and focal loss, with label smoothing."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class FocalLoss(nn.Module):
    """Binary focal loss (Lin et al. 2017): alpha-weighted BCE scaled by (1 - p_t)^gamma.

    alpha weights the positive class; alpha=None disables weighting, and gamma=0 with alpha=None is plain BCE.
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, label_smoothing: float = 0.0):
        super().__init__()
        self.alpha, self.gamma, self.label_smoothing = alpha, gamma, label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.float()
        soft = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        bce = F.binary_cross_entropy_with_logits(logits, soft, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        loss = bce * (1 - p_t).pow(self.gamma)
        if self.alpha is not None:
            loss = loss * (self.alpha * target + (1 - self.alpha) * (1 - target))
        return loss.mean()


class SmoothedBCE(nn.Module):
    """BCE with logits, optional positive-class weight and label smoothing."""

    def __init__(self, pos_weight: float | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor(float(pos_weight)))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        soft = target.float() * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        return F.binary_cross_entropy_with_logits(logits, soft, pos_weight=self.pos_weight)


def build_loss(name: str, n_neg: int, n_pos: int, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
               label_smoothing: float = 0.0) -> nn.Module:
    """The loss named by the config; `weighted-bce` weights positives by n_neg / n_pos."""
    if name == "bce":
        return SmoothedBCE(None, label_smoothing)
    if name == "weighted-bce":
        return SmoothedBCE(n_neg / max(n_pos, 1), label_smoothing)
    if name == "focal":
        return FocalLoss(focal_alpha, focal_gamma, label_smoothing)
    raise ValueError(f"unknown loss {name!r}")
