"""Where the model looked: Grad-CAM of the last conv stage (captum's `LayerGradCam`) and a colour overlay.

    gradcam(model, x)       -> (H, W) float heat map in [0, 1] for one normalised input
    overlay(image, heat)    -> RGB PIL image: the X-ray with the heat map blended on top

captum and matplotlib are imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .model import PneumoniaCNN
from .preprocessing import to_grayscale


def gradcam(model: PneumoniaCNN, x: torch.Tensor, target: int | None = None) -> np.ndarray:
    """(C, H, W) or (1, C, H, W) normalised input -> (H, W) Grad-CAM of `model.stages[-1]`, scaled to [0, 1].

    `target` is the class to explain: 1 = labels[1] (pneumonia), 0 = labels[0] (normal);
    None explains the class the model decides at its stored threshold. The model has one logit,
    so the evidence for class 0 is the negated logit.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"gradcam explains one image: expected (C, H, W) or (1, C, H, W), got {tuple(x.shape)}")
    was_training = model.training
    model.eval()
    # Callers often sit under torch.inference_mode(); Grad-CAM needs autograd, and an inference
    # tensor cannot enter a graph, hence the clone outside inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone()
        if target is None:
            with torch.no_grad():
                p = torch.sigmoid(model(x)).item()
            target = int(p >= model.threshold)
        sign = 1.0 if target == 1 else -1.0
        cam = LayerGradCam(lambda inp: sign * model(inp), model.stages[-1])
        attr = cam.attribute(x, relu_attributions=True)  # (1, 1, h, w) at the last stage's resolution
        attr = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    model.train(was_training)
    heat = attr[0, 0].detach().float().clamp_min(0).numpy()  # (H, W)
    peak = float(heat.max())
    return heat / peak if peak > 0 else heat


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.6, cmap: str = "jet", max_side: int | None = 512) -> Image.Image:
    """Blend a [0, 1] heat map (any size; stretched to the image like the model's squashed resize) over `image`.

    The colour's opacity grows with the heat (up to `alpha`), so cold regions show the plain X-ray.
    """
    from matplotlib import colormaps

    base = to_grayscale(image)
    if max_side and max(base.size) > max_side:
        scale = max_side / max(base.size)
        base = base.resize((max(1, round(base.width * scale)), max(1, round(base.height * scale))), Image.BILINEAR)
    h = Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F").resize(base.size, Image.BILINEAR)
    h = np.clip(np.asarray(h), 0.0, 1.0)
    colour = colormaps[cmap](h)[..., :3]  # (H, W, 3) float in [0, 1]
    gray = np.asarray(base, dtype=np.float32)[..., None] / 255.0
    a = alpha * h[..., None]  # (H, W, 1) per-pixel opacity
    out = (1.0 - a) * gray + a * colour
    return Image.fromarray(np.round(out * 255.0).astype(np.uint8), mode="RGB")
