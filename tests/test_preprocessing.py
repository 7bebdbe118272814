"""The one preprocessing path: any image mode/format/size in, model-ready tensor out; bad files refused clearly."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_CONFIG, bomb_png_bytes, make_test_image
from pneumonia_hf import ImageLoadError, PneumoniaCNN, build_eval_transform, load_image
from pneumonia_hf.preprocessing import normalize, prepare_image, preprocess_config

CFG_1 = {"image_size": 64, "in_channels": 1, "mean": [0.5], "std": [0.25]}
CFG_3 = {"image_size": 48, "in_channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def check_model_tensor(x: torch.Tensor, cfg: dict) -> None:
    """x is what the model expects: float32 (C, S, S), finite, inside the normalised [0, 1] range, not constant."""
    c, s = cfg["in_channels"], cfg["image_size"]
    assert x.shape == (c, s, s) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    mean, std = torch.tensor(cfg["mean"]).view(-1, 1, 1), torch.tensor(cfg["std"]).view(-1, 1, 1)
    raw = x * std + mean  # back to [0, 1]
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert x.std() > 0


@pytest.mark.parametrize(
    "mode,fmt",
    [("L", "JPEG"), ("RGB", "JPEG"), ("CMYK", "JPEG")]
    + [(m, "PNG") for m in ("L", "LA", "RGB", "RGBA", "P", "I;16", "1")],
)
@pytest.mark.parametrize("cfg", [CFG_1, CFG_3], ids=["1ch", "3ch"])
def test_every_mode_and_format_loads_to_a_model_tensor(tmp_path, mode, fmt, cfg):
    path = tmp_path / f"x.{fmt.lower()}"
    make_test_image(mode, (300, 517)).save(path, fmt)
    check_model_tensor(build_eval_transform(cfg)(path), cfg)


@pytest.mark.parametrize("size", [(8, 8), (64, 64), (517, 300), (1000, 60), (45, 700)])
def test_any_size_and_aspect_is_resized_to_the_model_size(tmp_path, size):
    path = tmp_path / "x.png"
    make_test_image("RGB", size).save(path)
    check_model_tensor(build_eval_transform(CFG_1)(path), CFG_1)


def test_every_source_type_gives_the_same_tensor(tmp_path):
    im = make_test_image("L", (120, 90))
    path = tmp_path / "x.png"
    im.save(path)
    data = path.read_bytes()
    t = build_eval_transform(CFG_1)
    ref = t(path)
    for src in (str(path), data, io.BytesIO(data), Image.open(path), np.asarray(im)):
        assert torch.equal(t(src), ref), type(src).__name__


def test_model_config_dict_and_config_json_give_the_same_transform(tmp_path):
    model = PneumoniaCNN(**TINY_CONFIG, equalize=True)
    model.save_pretrained(tmp_path / "m")
    img = tmp_path / "x.png"
    make_test_image("RGB", (100, 130)).save(img)
    config_json = tmp_path / "m" / "config.json"
    ref = build_eval_transform(model)(img)
    assert torch.equal(build_eval_transform(json.loads(config_json.read_text()))(img), ref)
    assert torch.equal(build_eval_transform(config_json)(img), ref)
    assert torch.equal(build_eval_transform(PneumoniaCNN.from_pretrained(tmp_path / "m"))(img), ref)
    assert preprocess_config(config_json) == preprocess_config(model)
    assert preprocess_config(model)["equalize"] is True and preprocess_config(model)["image_size"] == 64


# -- EXIF, aspect, bit depth ----------------------------------------------------------------------------------------


def _orientation_6() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the viewer must rotate 90 degrees clockwise
    return exif


def test_exif_orientation_is_applied_png(tmp_path):
    im = make_test_image("L", (40, 80))  # non-square, so a missed rotation also changes the shape
    im.save(tmp_path / "exif.png", exif=_orientation_6())
    loaded = load_image(tmp_path / "exif.png")
    expected = im.transpose(Image.Transpose.ROTATE_270)
    assert loaded.size == (80, 40)
    assert np.array_equal(np.asarray(loaded), np.asarray(expected))
    t = build_eval_transform(CFG_1)
    assert torch.equal(t(tmp_path / "exif.png"), t(expected))


def test_exif_orientation_is_applied_jpeg(tmp_path):
    im = make_test_image("RGB", (48, 96))
    im.save(tmp_path / "exif.jpg", quality=90, exif=_orientation_6())
    im.save(tmp_path / "plain.jpg", quality=90)  # same pixels, same encoder: identical decoded data
    rotated = load_image(tmp_path / "plain.jpg").transpose(Image.Transpose.ROTATE_270)
    loaded = load_image(tmp_path / "exif.jpg")
    assert loaded.size == (96, 48)
    assert np.array_equal(np.asarray(loaded), np.asarray(rotated))


def test_resize_squashes_instead_of_cropping(tmp_path):
    a = np.zeros((100, 200), np.uint8)  # 2:1, black
    a[:, :12] = 255  # a white left edge that any center crop would cut away
    a[:, -12:] = 128  # a gray right edge
    Image.fromarray(a).save(tmp_path / "wide.png")
    x = prepare_image(load_image(tmp_path / "wide.png"), {"image_size": 64})  # uint8 (1, 64, 64)
    assert x.shape == (1, 64, 64) and x.dtype == torch.uint8
    assert (x[0, :, :2] > 200).all()  # every row keeps the white edge
    assert ((x[0, :, -2:] > 100) & (x[0, :, -2:] < 160)).all()
    assert x[0, :, 10:54].float().mean() < 5


def test_16_bit_image_with_12_bit_values_uses_the_full_8_bit_range(tmp_path):
    a = (np.linspace(100, 4000, 64 * 96).reshape(64, 96)).astype(np.uint16)  # a 12-bit ramp in 16 bits
    Image.fromarray(a).save(tmp_path / "ramp16.png")
    assert Image.open(tmp_path / "ramp16.png").mode.startswith("I")
    out = np.asarray(load_image(tmp_path / "ramp16.png"))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert abs(float(out.mean()) - 127.5) < 2  # scaled, not clipped to white
    assert np.corrcoef(out.ravel(), a.ravel())[0, 1] > 0.999


# -- bad inputs -----------------------------------------------------------------------------------------------------


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    make_test_image("L", (200, 200)).save(buf, "JPEG", quality=95)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    make_test_image("L", (4, 4)).save(buf, "PNG")
    return buf.getvalue()


BAD_FILES = {
    "empty.png": lambda: b"",
    "notes.jpg": lambda: b"these are my notes, not an X-ray\n" * 20,
    "truncated.jpg": _truncated_jpeg,
    "bomb_9000.png": lambda: bomb_png_bytes(9_000, 9_000),  # over our 64 MP limit, under PIL's warning
    "bomb_12000.png": lambda: bomb_png_bytes(12_000, 12_000),  # PIL DecompressionBombWarning
    "bomb_20000.png": lambda: bomb_png_bytes(20_000, 20_000),  # PIL DecompressionBombError
    "tiny.png": _tiny_png,
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_files_raise_a_one_line_image_load_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name]())
    with pytest.raises(ImageLoadError) as info:
        build_eval_transform(CFG_1)(path)
    msg = str(info.value)
    assert msg and "\n" not in msg
    assert name in msg  # the user can tell which file it was
    assert isinstance(info.value, ValueError)


def test_bomb_message_says_why(tmp_path):
    (tmp_path / "bomb.png").write_bytes(bomb_png_bytes(20_000, 20_000))
    with pytest.raises(ImageLoadError, match="bomb"):
        load_image(tmp_path / "bomb.png")


def test_missing_file_and_empty_bytes_raise_image_load_error(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")


# -- train/serve skew -----------------------------------------------------------------------------------------------


TRAIN_APP_CONFIGS = {
    "default": {},
    "tiny": TINY_CONFIG,
    "3ch-equalize": {"in_channels": 3, "mean": [0.4] * 3, "std": [0.3] * 3, "image_size": 96, "equalize": True},
}


@pytest.mark.parametrize("config", list(TRAIN_APP_CONFIGS))
def test_train_validation_and_app_preprocessing_give_the_identical_tensor(xray_paths, config):
    """The app reads a file path; training decodes with `datasets` and caches uint8 pixels. Same tensor, bit for bit."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    from pneumonia_hf.data import decode_dataset, to_tensors

    model = PneumoniaCNN(**TRAIN_APP_CONFIGS[config])
    paths = [xray_paths["NORMAL"], xray_paths["PNEUMONIA"]]
    app = torch.stack([build_eval_transform(model)(p) for p in paths])  # (2, C, S, S)
    assert app.shape == (2, model.in_channels, model.image_size, model.image_size)

    # 1. `datasets` decodes the image to PIL (as Image() columns do); training's preprocessing takes it from there.
    decoded = Dataset.from_dict({"image": [str(p) for p in paths]}, features=Features({"image": ImageFeature()}))
    via_pil = torch.stack([normalize(prepare_image(load_image(ex["image"]), model), model) for ex in decoded])
    assert torch.equal(via_pil, app)

    # 2. Training's cached datasets.map, from encoded bytes (Hub/parquet sources) and from paths (image folders).
    features = Features({"image": ImageFeature(decode=False), "label": Value("int64"), "path": Value("string")})
    for kind in ("bytes", "path"):
        images = [{"bytes": p.read_bytes(), "path": p.name} if kind == "bytes" else {"bytes": None, "path": str(p)}
                  for p in paths]
        ds = Dataset.from_dict({"image": images, "label": [0, 1], "path": [p.name for p in paths]}, features=features)
        cached, skipped = decode_dataset(ds, model)
        assert skipped == []
        pixels, labels = to_tensors(cached)  # (2, C, S, S) uint8, what training keeps in memory
        assert pixels.dtype == torch.uint8 and labels.tolist() == [0, 1]
        assert torch.equal(normalize(pixels, model), app), kind
