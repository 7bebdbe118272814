"""Acquisition-shift perturbations for scoring: does a model (and its threshold) survive another scanner?

Each perturbation maps cached uint8 images (B, C, S, S) to uint8, and is applied to validation folds only,
so the CV protocol reports how metrics move under exposure, contrast, sharpness, noise and framing changes
that the held-out test split is known to carry.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision.transforms.v2.functional as TF


def _noise(x: torch.Tensor, sigma: float = 8.0) -> torch.Tensor:
    g = torch.Generator(device=x.device).manual_seed(0)  # fixed: the same perturbed set every time
    n = torch.randn(x.shape, generator=g, device=x.device) * sigma
    return (x.float() + n).clamp(0, 255).round().to(torch.uint8)


def _zoom(x: torch.Tensor, frac: float) -> torch.Tensor:
    """frac < 1: crop the centre and resize back (tighter framing); frac > 1: pad with black (wider framing)."""
    s = x.shape[-1]
    if frac < 1:
        c = round(s * frac)
        return TF.resize(TF.center_crop(x, [c, c]), [s, s], antialias=True)
    pad = round(s * (frac - 1) / 2)
    return TF.resize(TF.pad(x, [pad, pad, pad, pad], fill=0), [s, s], antialias=True)


PERTURBATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gamma_0.6": lambda x: TF.adjust_gamma(x, 0.6),
    "gamma_1.6": lambda x: TF.adjust_gamma(x, 1.6),
    "contrast_0.6": lambda x: TF.adjust_contrast(x, 0.6),
    "contrast_1.5": lambda x: TF.adjust_contrast(x, 1.5),
    "equalize": TF.equalize,
    "blur": lambda x: TF.gaussian_blur(x, [7, 7], [1.5, 1.5]),
    "noise": _noise,
    "zoom_in_0.85": lambda x: _zoom(x, 0.85),
    "zoom_out_1.15": lambda x: _zoom(x, 1.15),
}


def perturb(x: torch.Tensor, name: str) -> torch.Tensor:
    """Apply one named perturbation to uint8 images (B, C, S, S)."""
    try:
        return PERTURBATIONS[name](x)
    except KeyError:
        raise ValueError(f"unknown perturbation {name!r}; choose from {sorted(PERTURBATIONS)}") from None
