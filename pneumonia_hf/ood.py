"""Out-of-distribution guard: is this upload a frontal chest X-ray at all?

Two layers, so a photo, a scanned document or a blank image gets a warning instead of a confident label:

    image_checks(image)          model-free checks on the ORIGINAL upload (colour, blank, paper/text,
                                 fine edges, size and aspect ratio, similarity to the mean chest X-ray layout)
    fit_ood(embeddings) -> dict  reference statistics of training embeddings (JSON types; training stores
                                 them in the model's `ood` config so they travel with the weights)
    check_ood(image, model, ...) both layers; the embedding layer runs when `model.ood` is set

Thresholds were tuned with `benchmarks/ood_eval.py` on the 5,216 training X-rays and generated non-X-rays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .model import PneumoniaCNN

# Model-free limits. Over the 5,216 training X-rays: colour fraction 0, gray std >= 19, top-8-gray-level
# mass <= 0.36, near-white fraction <= 0.53, edge density <= 0.27, layout similarity 0.5th pct 0.49.
MIN_SIDE = 64
ASPECT_RANGE = (0.4, 2.5)
MAX_COLOUR_FRACTION = 0.02  # pixels whose channels differ by > 24 gray levels
MIN_STD = 10.0  # gray-level standard deviation: below it the image is blank
MAX_MODE_MASS = 0.42  # share of pixels in the 8 most common gray levels (paper, drawings, flat fills)
MAX_WHITE_FRACTION = 0.45  # pixels brighter than 225 (paper)
MAX_EDGE_DENSITY = 0.30  # mean gradient / std: text and noise are all edges, X-rays are smooth
MIN_LAYOUT_SIMILARITY = 0.40  # correlation with the mean frontal chest X-ray below

# Mean of z-scored 16x16 box-downsampled thumbnails of every 4th training X-ray (1,304 images), x100:
# dark air at the sides, bright mediastinum and spine in the middle, bright abdomen at the bottom.
# Regenerate with `python benchmarks/ood_eval.py --print-template`.
_CXR_TEMPLATE_X100 = [
    [-109, -68, -59, -48, -28, 16, 58, 78, 77, 55, 13, -31, -51, -63, -84, -116],
    [-101, -57, -33, -12, 9, 30, 53, 70, 69, 50, 30, 9, -13, -37, -68, -109],
    [-101, -55, -16, 18, 32, 31, 47, 71, 71, 43, 31, 33, 16, -21, -65, -109],
    [-115, -65, -6, 35, 28, 7, 33, 77, 80, 30, 8, 32, 32, -13, -73, -118],
    [-131, -76, -2, 38, 8, -15, 24, 83, 89, 29, -9, 15, 36, -10, -84, -133],
    [-147, -85, 2, 27, -14, -20, 28, 91, 100, 46, -3, 0, 29, -6, -93, -147],
    [-162, -89, 7, 11, -29, -18, 39, 101, 109, 72, 17, -6, 17, -1, -96, -160],
    [-170, -88, 8, -8, -38, -12, 52, 110, 116, 86, 41, -4, 4, 0, -97, -171],
    [-177, -87, 3, -24, -40, 0, 62, 116, 122, 95, 62, 8, -6, -4, -97, -178],
    [-185, -85, -7, -36, -39, 1, 63, 119, 126, 100, 77, 25, -11, -11, -96, -183],
    [-188, -84, -19, -43, -36, -5, 57, 117, 127, 100, 81, 34, -15, -20, -96, -187],
    [-189, -83, -28, -35, -20, 7, 59, 117, 128, 95, 76, 34, -19, -30, -96, -189],
    [-189, -81, -19, 2, 34, 57, 85, 123, 129, 95, 79, 44, -8, -32, -95, -190],
    [-187, -73, 10, 55, 85, 99, 109, 132, 134, 107, 96, 74, 30, -13, -90, -188],
    [-184, -63, 39, 87, 111, 120, 123, 138, 137, 116, 106, 91, 64, 16, -80, -186],
    [-179, -55, 54, 100, 120, 127, 130, 139, 136, 118, 107, 96, 77, 35, -71, -182],
]
TEMPLATE_SIZE = 16


def _zscore(a: np.ndarray) -> np.ndarray:
    return (a - a.mean()) / (a.std() + 1e-6)


_TEMPLATE = _zscore(np.asarray(_CXR_TEMPLATE_X100, dtype=np.float64) / 100.0)


def layout_thumbnail(image: Image.Image, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """Any PIL image -> (size, size) z-scored gray thumbnail (squashed like the model's resize)."""
    s = np.asarray(image.convert("L").resize((size, size), Image.BOX), dtype=np.float64)
    return _zscore(s)


@dataclass
class OODResult:
    """Whether an upload looks out of distribution, why (one line per reason), and the raw scores."""

    is_ood: bool
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def warning(self) -> str | None:
        """One paragraph for the user, or None when the upload looks like a chest X-ray."""
        if not self.is_ood:
            return None
        return (
            "This does not look like a frontal chest X-ray: " + "; ".join(self.reasons) + ". "
            "The model was trained only on pediatric frontal chest X-rays, so its answer would be meaningless here."
        )


def image_features(image: Image.Image) -> dict[str, float]:
    """Model-free scores of the original upload (any mode): size, colour, contrast, paper, edges, layout."""
    w, h = image.size
    if image.mode not in ("RGB", "L"):
        from .preprocessing import to_grayscale

        if image.mode in ("1", "I", "F", "LA", "La") or image.mode.startswith("I;"):
            image = to_grayscale(image)
        else:  # colour modes; alpha composited on black, as to_grayscale does for the model
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    rgb = np.asarray(image.convert("RGB").resize((128, 128), Image.BILINEAR), dtype=np.float32)  # (128, 128, 3)
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (128, 128)
    std = float(gray.std())
    gy, gx = np.gradient(gray)
    hist = np.bincount(np.clip(gray, 0, 255).astype(np.uint8).ravel(), minlength=256) / gray.size
    return {
        "width": float(w),
        "height": float(h),
        "aspect": w / h,
        "colour_fraction": float(((rgb.max(-1) - rgb.min(-1)) > 24).mean()),
        "std": std,
        "mode_mass": float(np.sort(hist)[-8:].sum()),
        "white_fraction": float((gray > 225).mean()),
        "edge_density": float(np.hypot(gx, gy).mean() / (std + 1e-6)),
        "layout_similarity": float((layout_thumbnail(image) * _TEMPLATE).mean()),
    }


def image_checks(image: Image.Image) -> tuple[list[str], dict[str, float]]:
    """Layer (a): reasons the original upload is not a chest X-ray (empty when it passes), and the scores."""
    f = image_features(image)
    w, h = int(f["width"]), int(f["height"])
    reasons = []
    if min(w, h) < MIN_SIDE:
        reasons.append(f"it is only {w}x{h} pixels (chest X-rays are at least {MIN_SIDE} px a side)")
    if not ASPECT_RANGE[0] <= f["aspect"] <= ASPECT_RANGE[1]:
        reasons.append(f"its aspect ratio {f['aspect']:.2f} is outside the {ASPECT_RANGE[0]}-{ASPECT_RANGE[1]} of X-rays")
    if f["colour_fraction"] > MAX_COLOUR_FRACTION:
        reasons.append(f"it is a colour image ({f['colour_fraction']:.0%} of pixels coloured; X-rays are grayscale)")
    if f["std"] < MIN_STD:
        reasons.append("it is nearly blank (almost no contrast)")
    if f["mode_mass"] > MAX_MODE_MASS or f["white_fraction"] > MAX_WHITE_FRACTION:
        reasons.append("it is mostly flat paper-like tones, like a scanned document or a drawing")
    if f["edge_density"] > MAX_EDGE_DENSITY:
        reasons.append("it is full of fine edges, like text or noise")
    if f["layout_similarity"] < MIN_LAYOUT_SIMILARITY:
        reasons.append(
            f"its layout does not match a frontal chest X-ray (similarity {f['layout_similarity']:.2f} "
            f"< {MIN_LAYOUT_SIMILARITY})"
        )
    return reasons, f


@torch.inference_mode()
def embed(model: PneumoniaCNN, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) normalised images -> (B, F) pooled embeddings (the input of the classifier head)."""
    model.eval()
    return model.forward_head(model.forward_features(x), pre_logits=True)


def _round(a: np.ndarray | float, digits: int = 6) -> list | float:
    """Floats with `digits` significant digits, as plain JSON lists (keeps config.json small)."""
    if np.isscalar(a):
        return float(f"{float(a):.{digits}g}")
    return [_round(v, digits) for v in np.asarray(a)]


def fit_ood(
    embeddings: torch.Tensor | np.ndarray, quantile: float = 0.995, rank: int = 16, holdout: float = 0.2, seed: int = 0
) -> dict:
    """(N, F) training embeddings -> JSON-typed stats for a low-rank (PPCA) Mahalanobis distance.

    The covariance is its top-`rank` principal directions plus an isotropic residual variance, which
    stays well-conditioned with few images. The distance threshold is the `quantile` of distances of
    a held-out `holdout` share of the embeddings (training distances are biased low); with under 50
    embeddings the threshold is taken on the fitting embeddings themselves.
    """
    e = np.asarray(embeddings.detach().cpu() if isinstance(embeddings, torch.Tensor) else embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] < 3:
        raise ValueError(f"fit_ood needs (N >= 3, F) embeddings, got shape {e.shape}")
    n, dim = e.shape
    idx = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(holdout * n)) if n >= 50 else 0
    hold, fit = e[idx[:n_hold]], e[idx[n_hold:]]
    mean = fit.mean(0)
    _, s, vt = np.linalg.svd(fit - mean, full_matrices=False)
    eig = s**2 / max(len(fit) - 1, 1)  # (min(n, F),) principal variances
    k = int(min(rank, dim - 1, len(eig)))
    total = float(np.sum(np.var(fit, axis=0, ddof=1)))
    resid = max((total - float(eig[:k].sum())) / max(dim - k, 1), 1e-6 * float(eig[0]) + 1e-12)
    stats = {
        "method": "ppca-mahalanobis",
        "dim": dim,
        "rank": k,
        "mean": _round(mean),
        "components": [_round(v) for v in vt[:k]],
        "eigenvalues": _round(np.maximum(eig[:k], resid)),
        "residual_variance": _round(resid),
        "quantile": quantile,
        "n_fit": len(fit),
        "n_threshold": len(hold) if n_hold else len(fit),
    }
    ref = hold if n_hold else fit
    stats["threshold"] = _round(float(np.quantile(ood_distance(stats, ref), quantile)))
    return stats


def ood_distance(stats: dict, embeddings: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B, F) embeddings -> (B,) Mahalanobis distances under the stats of `fit_ood`."""
    e = np.asarray(embeddings.detach().cpu() if isinstance(embeddings, torch.Tensor) else embeddings, dtype=np.float64)
    e = e.reshape(-1, e.shape[-1])
    if e.shape[1] != stats["dim"]:
        raise ValueError(f"embeddings have {e.shape[1]} features but the OOD stats were fitted on {stats['dim']}")
    c = e - np.asarray(stats["mean"])
    comps = np.asarray(stats["components"]).reshape(-1, stats["dim"])  # (k, F)
    proj = c @ comps.T  # (B, k)
    inside = (proj**2 / np.asarray(stats["eigenvalues"])).sum(1)
    outside = np.maximum((c**2).sum(1) - (proj**2).sum(1), 0.0) / stats["residual_variance"]
    return np.sqrt(inside + outside)


def check_ood(
    image: Image.Image,
    model: PneumoniaCNN | None = None,
    *,
    x: torch.Tensor | None = None,
    embedding: torch.Tensor | None = None,
) -> OODResult:
    """Both layers for one upload: `image` is the original (pre-grayscale) image; the embedding layer
    runs when `model.ood` holds stats, from `embedding` (F,)/(1, F), or `x` (C, H, W), or the image itself."""
    reasons, scores = image_checks(image)
    stats = getattr(model, "ood", None) if model is not None else None
    if stats:
        if embedding is None:
            if x is None:
                from .preprocessing import build_eval_transform

                x = build_eval_transform(model)(image)
            embedding = embed(model, x.unsqueeze(0) if x.dim() == 3 else x)
        d = float(ood_distance(stats, embedding)[0])
        scores["embedding_distance"], scores["embedding_threshold"] = d, float(stats["threshold"])
        if d > stats["threshold"]:
            reasons.append(
                f"the model's features are far from those of its training X-rays "
                f"(distance {d:.1f} > {stats['threshold']:.1f})"
            )
    return OODResult(is_ood=bool(reasons), reasons=reasons, scores=scores)
