"""Shape-level tests of PneumoniaCNN: forward/backward, the timm-style feature API, config checks and config.json."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from pneumonia_hf import PneumoniaCNN

CONFIGS = [
    # (kwargs, input size)
    ({"in_channels": 1, "stem_width": 8, "widths": [8], "depths": [1], "image_size": 32}, 32),
    ({"in_channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "widths": [8, 16], "depths": [2, 1]}, 48),
    ({"in_channels": 1, "widths": [8, 16, 24], "depths": [1, 2, 1], "image_size": 64}, 64),
    ({}, 128),  # the default config
]


@pytest.mark.parametrize("kwargs,size", CONFIGS)
def test_forward_backward_shapes(kwargs, size):
    torch.manual_seed(0)
    model = PneumoniaCNN(**kwargs).train()
    x = torch.randn(2, model.in_channels, size, size)
    logits = model(x)
    assert logits.shape == (2,) and logits.dtype == torch.float32
    logits.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("kwargs,size", CONFIGS)
def test_features_head_and_pre_logits_shapes(kwargs, size):
    model = PneumoniaCNN(**kwargs).eval()
    widths = kwargs.get("widths", [16, 32, 64, 128])
    x = torch.randn(3, model.in_channels, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        stride = 2 ** (len(widths) + 1)  # stem + one stride-2 block per stage
        assert feats.shape == (3, widths[-1], size // stride, size // stride)
        assert model.num_features == widths[-1]
        assert model.forward_head(feats).shape == (3,)
        assert model.forward_head(feats, pre_logits=True).shape == (3, widths[-1])
        assert torch.equal(model.forward_head(feats), model(x))


def test_non_square_and_odd_inputs_still_give_one_logit_per_image():
    model = PneumoniaCNN(widths=[8, 16], depths=[1, 1], stem_width=8).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 50, 77)).shape == (2,)


def test_predict_proba_is_a_probability_and_keeps_the_mode():
    model = PneumoniaCNN(widths=[8], depths=[1], stem_width=8).train()
    p = model.predict_proba(torch.randn(4, 1, 32, 32))
    assert p.shape == (4,) and ((p >= 0) & (p <= 1)).all()
    assert model.training


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"widths": [8, 16], "depths": [1]}, "same length"),
        ({"in_channels": 3}, "mean/std"),
        ({"in_channels": 1, "mean": [0.5, 0.5]}, "mean/std"),
        ({"std": [0.2, 0.2, 0.2]}, "mean/std"),
        ({"labels": ["NORMAL", "BACTERIAL", "VIRAL"]}, "two classes"),
    ],
)
def test_invalid_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PneumoniaCNN(**kwargs)


def test_default_config_is_small():
    n = sum(p.numel() for p in PneumoniaCNN().parameters())
    assert 10_000 < n < 500_000


def test_config_json_holds_the_init_kwargs(tmp_path):
    kwargs = {
        "in_channels": 3,
        "stem_width": 12,
        "widths": [8, 16, 32],
        "depths": [1, 2, 1],
        "dropout": 0.1,
        "image_size": 96,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "equalize": True,
        "labels": ["normal", "pneumonia"],
        "threshold": 0.42,
    }
    PneumoniaCNN(**kwargs).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    # Every init argument is in config.json: the given ones as given, the others at their (JSON-typed) defaults.
    defaults = {
        name: json.loads(json.dumps(p.default))
        for name, p in inspect.signature(PneumoniaCNN.__init__).parameters.items()
        if name != "self"
    }
    assert config == {**defaults, **kwargs}
    loaded = PneumoniaCNN.from_pretrained(tmp_path)
    assert (loaded.in_channels, loaded.image_size, loaded.mean, loaded.std, loaded.equalize, loaded.labels,
            loaded.threshold) == (3, 96, kwargs["mean"], kwargs["std"], True, kwargs["labels"], 0.42)
