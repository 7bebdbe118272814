"""Out-of-distribution guard: model-free checks, embedding stats in config.json, both layers together."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from pneumonia_hf import PneumoniaCNN, build_eval_transform
from pneumonia_hf.ood import check_ood, embed, fit_ood, image_checks, ood_distance
from pneumonia_hf.preprocessing import read_image
from space_helpers import XRAY_DIR

needs_data = pytest.mark.skipif(not XRAY_DIR.is_dir(), reason="no chest X-rays under ../shared/data")


def xray_sample(n: int, stride: int = 97) -> list:
    """Every `stride`-th training X-ray (both classes), up to n."""
    return sorted(XRAY_DIR.glob("*/*.jpeg"))[::stride][:n]


def document() -> Image.Image:
    im = Image.new("L", (600, 800), 245)
    d = ImageDraw.Draw(im)
    for y in range(40, 760, 24):
        d.text((40, y), "Invoice total amount due by date for the patient above", fill=20, font=ImageFont.load_default(size=16))
    return im


def colour_photo() -> Image.Image:
    yy, xx = np.mgrid[0:300, 0:400]
    return Image.fromarray(np.stack([xx * 255 // 400, yy * 255 // 300, 128 + 0 * xx], -1).astype(np.uint8), "RGB")


@pytest.mark.parametrize(
    "image, reason",
    [
        (colour_photo(), "colour"),
        (document(), "paper"),
        (Image.new("L", (512, 512), 128), "blank"),
        (Image.new("RGB", (512, 512), (255, 255, 255)), "blank"),
        (Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)), "edges"),
        (Image.new("L", (40, 40), 0), "pixels"),
    ],
    ids=["colour", "document", "gray", "white", "noise", "tiny"],
)
def test_non_xrays_are_flagged_with_a_reason(image, reason):
    reasons, scores = image_checks(image)
    assert any(reason in r for r in reasons), reasons
    assert json.dumps(scores)  # plain floats


@needs_data
def test_real_xrays_pass_the_image_checks():
    files = xray_sample(40)
    flagged = [f.name for f in files if image_checks(read_image(f))[0]]
    assert len(flagged) <= 1, flagged  # benchmark: 13 of 5,216 (0.25 %)


@needs_data
def test_colour_version_of_an_xray_is_flagged_on_the_original_upload():
    im = read_image(xray_sample(1)[0]).convert("RGB")
    a = np.asarray(im).astype(np.int16)
    tinted = Image.fromarray(np.clip(a * [1.0, 0.6, 0.3] + [40, 0, 0], 0, 255).astype(np.uint8))
    assert not image_checks(im)[0]
    assert any("colour" in r for r in image_checks(tinted)[0])


def test_fit_ood_is_json_and_travels_in_config(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(400, 128)) @ rng.normal(size=(128, 128)) * 0.1 + 3.0  # correlated (N, F)
    stats = fit_ood(emb)
    assert stats["dim"] == 128 and stats["rank"] == 16 and stats["n_fit"] == 320 and stats["n_threshold"] == 80
    d = ood_distance(stats, emb)
    assert 0.98 <= (d <= stats["threshold"]).mean() <= 1.0
    assert (ood_distance(stats, emb + 5 * rng.normal(size=emb.shape)) > stats["threshold"]).mean() > 0.95

    PneumoniaCNN(ood=stats).save_pretrained(tmp_path)
    loaded = PneumoniaCNN.from_pretrained(tmp_path)
    assert loaded.ood == json.loads(json.dumps(stats))
    assert json.loads((tmp_path / "config.json").read_text())["ood"]["threshold"] == stats["threshold"]
    with pytest.raises(ValueError, match="fitted on 128"):
        ood_distance(stats, emb[:, :64])


@needs_data
def test_check_ood_uses_embedding_stats_when_the_model_has_them():
    torch.manual_seed(0)
    model = PneumoniaCNN().eval()
    files = xray_sample(60, stride=43)
    t = build_eval_transform(model)
    emb = embed(model, torch.stack([t(f) for f in files]))
    assert emb.shape == (len(files), model.num_features)
    model.ood = fit_ood(emb)
    ok = check_ood(read_image(files[0]), model)
    assert "embedding_distance" in ok.scores and ok.warning is None
    # a shifted embedding is far from the training ones even when the picture passes the image checks
    far = check_ood(read_image(files[0]), model, embedding=emb[:1] + 100.0)
    assert far.is_ood and "features are far" in far.warning
    # without stats only the image checks run
    model.ood = None
    assert "embedding_distance" not in check_ood(read_image(files[0]), model).scores
