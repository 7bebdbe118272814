"""Grad-CAM (captum LayerGradCam on the last stage) and the overlay helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia_hf import PneumoniaCNN
from pneumonia_hf.explain import gradcam, overlay

pytest.importorskip("captum")


@pytest.fixture(scope="module")
def model() -> PneumoniaCNN:
    torch.manual_seed(0)
    return PneumoniaCNN(image_size=64).eval()


@pytest.mark.parametrize("target", [None, 0, 1])
def test_gradcam_is_a_normalised_heat_map_at_input_size(model, target):
    x = torch.randn(1, 64, 64)
    heat = gradcam(model, x, target=target)
    assert heat.shape == (64, 64) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1 + 1e-6
    assert not model.training
    assert not model.stages[-1]._forward_hooks and not model.stages[-1]._backward_hooks  # captum cleaned up


def test_gradcam_works_under_inference_mode_and_is_deterministic(model):
    x = torch.randn(1, 1, 64, 64)
    ref = gradcam(model, x)
    with torch.inference_mode():
        again = gradcam(model, x.clone())
    np.testing.assert_allclose(ref, again, atol=1e-6)


def test_gradcam_rejects_batches(model):
    with pytest.raises(ValueError, match="one image"):
        gradcam(model, torch.randn(2, 1, 64, 64))


def test_overlay_is_rgb_at_image_size_capped():
    heat = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    out = overlay(Image.new("L", (300, 200), 100), heat)
    assert out.mode == "RGB" and out.size == (300, 200)
    big = overlay(Image.new("I;16", (1200, 800)), heat, max_side=512)
    assert big.size == (512, 341)
    a = np.asarray(out).astype(int)
    assert (a[0, 0] == 100).all()  # zero heat: the plain X-ray shows through
    assert a[-1, -1, 0] > a[-1, -1, 2] + 50  # full heat: jet's dark red, blended at alpha 0.6
