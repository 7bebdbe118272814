"""DICOM through the package's one loader (`load_image`): LUTs, MONOCHROME1, errors, and the CLI."""

from __future__ import annotations

import builtins
import csv
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia_hf import ImageLoadError, PneumoniaCNN, build_eval_transform, load_image
from pneumonia_hf.preprocessing import read_image
from space_helpers import write_dicom

pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def gray8() -> np.ndarray:
    """A 96x80 8-bit test picture with the full 0..255 range (a ramp plus a bright disc)."""
    yy, xx = np.mgrid[0:96, 0:80]
    a = xx / 79 * 200 + 55 * ((yy - 48) ** 2 + (xx - 40) ** 2 < 400)
    a[0, 0], a[-1, -1] = 0, 255  # full range, so min-max scaling of the DICOM values is the identity
    return a.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_16bit_dicom_becomes_the_same_8bit_image(tmp_path, gray8, photometric):
    path = write_dicom(tmp_path / "x.dcm", gray8, photometric)
    im = load_image(path)
    assert im.mode == "L" and im.size == (80, 96)
    # modality LUT + window map back to the picture; MONOCHROME1 is inverted so bone stays bright
    assert np.abs(np.asarray(im, dtype=int) - gray8).max() <= 2


def test_voi_window_is_applied(tmp_path, gray8):
    # a window over the lower half of the values saturates everything brighter than mid-gray
    a = np.asarray(load_image(write_dicom(tmp_path / "w.dcm", gray8, window=(0, 1020))))
    assert (a[gray8 >= 128] == 255).all()
    assert np.abs(a[gray8 < 120].astype(int) - 2 * gray8[gray8 < 120].astype(int)).max() <= 3


def test_dicom_found_by_magic_without_suffix_and_from_bytes(tmp_path, gray8):
    path = write_dicom(tmp_path / "x.dcm", gray8)
    bare = tmp_path / "IM0001"
    shutil.copy(path, bare)
    ref = np.asarray(load_image(path))
    assert np.array_equal(np.asarray(load_image(bare)), ref)
    assert np.array_equal(np.asarray(load_image(path.read_bytes())), ref)


def test_eval_transform_reads_dicom_like_the_png_of_the_same_picture(tmp_path, gray8):
    model = PneumoniaCNN()
    t = build_eval_transform(model)
    Image.fromarray(gray8).save(tmp_path / "x.png")
    x_png, x_dcm = t(tmp_path / "x.png"), t(write_dicom(tmp_path / "x.dcm", gray8))
    assert x_dcm.shape == (1, model.image_size, model.image_size)
    assert torch.allclose(x_png, x_dcm, atol=3 / 255 / model.std[0])
    # the Space reads the original once (read_image) and transforms it: the same tensor as one step
    assert torch.equal(t(read_image(tmp_path / "x.dcm")), x_dcm)


@pytest.mark.parametrize(
    "content, message",
    [(b"not a dicom at all" * 20, "no image"), (None, "not a readable DICOM image")],
)
def test_bad_dicom_gives_one_line_error(tmp_path, gray8, content, message):
    path = tmp_path / "bad.dcm"
    if content is None:  # a real DICOM cut short inside the pixel data
        content = write_dicom(tmp_path / "ok.dcm", gray8).read_bytes()[:3000]
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=message) as e:
        load_image(path)
    assert "\n" not in str(e.value)


def test_missing_pydicom_is_a_clear_error(tmp_path, gray8, monkeypatch):
    path = write_dicom(tmp_path / "x.dcm", gray8)
    real_import = builtins.__import__

    def no_pydicom(name, *args, **kwargs):
        if name == "pydicom" or name.startswith("pydicom."):
            raise ImportError("No module named 'pydicom'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pydicom)
    with pytest.raises(ImageLoadError, match="needs pydicom"):
        load_image(path)


def test_cli_predicts_dicom_files_and_folders(tmp_path, gray8, capsys):
    from pneumonia_hf.cli import main

    model_dir = tmp_path / "model"
    PneumoniaCNN().save_pretrained(model_dir)
    data = tmp_path / "data"
    data.mkdir()
    write_dicom(data / "a.dcm", gray8, "MONOCHROME1")
    write_dicom(data / "b.dcm", gray8, "MONOCHROME2")
    assert main(["predict", str(data), "--model", str(model_dir)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["error"] for r in rows] == ["", ""] and all(r["label"] for r in rows)
    p = [float(r["probability_pneumonia"]) for r in rows]
    assert p[0] == pytest.approx(p[1], abs=1e-3)  # MONOCHROME1 and MONOCHROME2 of one picture agree
