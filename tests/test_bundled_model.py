"""The checkpoint that ships in pneumonia_hf/pretrained: loads strictly, is the default, and is not garbage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import DATA_DIR
from pneumonia_hf import PneumoniaCNN, load_model, predict_files
from pneumonia_hf.inference import BUNDLED_MODEL_DIR

pytestmark = pytest.mark.skipif(not (BUNDLED_MODEL_DIR / "model.safetensors").is_file(), reason="no bundled model")


def test_bundled_checkpoint_is_hub_layout_and_loads_strictly():
    files = sorted(p.name for p in BUNDLED_MODEL_DIR.iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((BUNDLED_MODEL_DIR / "config.json").read_text())
    assert cfg["labels"] == ["NORMAL", "PNEUMONIA"] and 0 < cfg["threshold"] < 1
    ood = cfg["ood"]  # fitted on the training images, widened (never narrowed) by the drift CV measured
    assert 0 < ood["threshold_from_training_images"] <= ood["threshold"] and ood["cv_widening"] > 0
    model = load_model()
    assert sum(p.numel() for p in model.parameters()) < 500_000
    same = PneumoniaCNN.from_pretrained(BUNDLED_MODEL_DIR)
    x = torch.randn(2, model.in_channels, model.image_size, model.image_size)
    with torch.no_grad():
        assert torch.equal(model(x), same(x))
    card = (BUNDLED_MODEL_DIR / "README.md").read_text()
    assert "model-index" in card and "Not a medical device" in card and "{{" not in card


@pytest.mark.skipif(not DATA_DIR.is_dir(), reason="needs ../shared/data")
def test_bundled_model_separates_the_classes_on_real_xrays():
    """A sanity floor, not a metric: these are training images, so only a broken model or path fails it."""
    files, labels = [], []
    for y, cls in enumerate(("NORMAL", "PNEUMONIA")):
        picked = sorted((DATA_DIR / "train" / cls).glob("*.jpeg"))[::97][:25]
        files += picked
        labels += [y] * len(picked)
    model = load_model()
    res = predict_files(model, files, batch_size=16)
    p = np.array([r.probability_pneumonia for r in res])
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(labels, p) > 0.95
    assert all(r.label == model.labels[int(r.probability_pneumonia >= model.threshold)] for r in res)
