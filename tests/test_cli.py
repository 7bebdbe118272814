"""The real `pneumonia-hf predict` console script on folders of good and broken files."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DATA_DIR, TINY_CONFIG, bomb_png_bytes, make_test_image, randomize_batchnorm
from pneumonia_hf import PneumoniaCNN, build_eval_transform
from pneumonia_hf.cli import main
from pneumonia_hf.inference import BUNDLED_MODEL_DIR
from pneumonia_hf.model import WEIGHTS_NAME

SCRIPT = Path(sys.executable).with_name("pneumonia-hf")
if not SCRIPT.exists():
    SCRIPT = Path(shutil.which("pneumonia-hf") or "pneumonia-hf")


def write_good_images(folder: Path) -> list[Path]:
    """PNGs and JPEGs in several modes and sizes, in nested folders, plus a real X-ray when ../shared/data has one."""
    images = {
        "a_gray.png": ("L", (120, 90), "PNG"),
        "b_rgb.jpg": ("RGB", (300, 517), "JPEG"),
        "UPPER.PNG": ("RGBA", (64, 64), "PNG"),
        "nested/c_16bit.png": ("I;16", (200, 150), "PNG"),
        "nested/deeper/d_palette.png": ("P", (80, 160), "PNG"),
    }
    out = []
    for i, (rel, (mode, size, fmt)) in enumerate(images.items()):
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        make_test_image(mode, size, seed=i).save(path, fmt)
        out.append(path)
    real = sorted((DATA_DIR / "train" / "PNEUMONIA").glob("*.jp*g"))[:1]
    if real:
        out.append(Path(shutil.copy(real[0], folder / "nested" / real[0].name)))
    return out


def write_bad_files(folder: Path) -> list[Path]:
    """Files with image suffixes that are not readable images."""
    jpeg = io.BytesIO()
    make_test_image("L", (200, 200)).save(jpeg, "JPEG", quality=95)
    contents = {
        "empty.png": b"",
        "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "nested/notes.jpg": b"not an image at all\n" * 10,
        "bomb.png": bomb_png_bytes(20_000, 20_000),
    }
    out = []
    for rel, data in contents.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out.append(path)
    return out


def run_cli(*args: str | Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=120)


def read_rows(text: str) -> dict[str, dict[str, str]]:
    return {row["path"]: row for row in csv.DictReader(io.StringIO(text))}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    randomize_batchnorm(PneumoniaCNN(**TINY_CONFIG)).save_pretrained(path)
    return path


def test_predict_folder_with_broken_files(model_dir, tmp_path):
    folder = tmp_path / "images"
    good, bad = write_good_images(folder), write_bad_files(folder)
    (folder / "nested" / "readme.txt").write_text("not an image suffix: skipped when walking folders")
    out_csv = tmp_path / "out" / "predictions.csv"

    r = run_cli("predict", folder, "--model", model_dir, "--csv", out_csv, tmp_path=tmp_path)

    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    rows = read_rows(out_csv.read_text())
    assert set(rows) == {str(p) for p in good + bad}
    assert f"wrote {len(rows)} rows" in r.stdout

    model = PneumoniaCNN.from_pretrained(model_dir)
    transform = build_eval_transform(model)
    for p in good:
        row = rows[str(p)]
        prob = float(row["probability_pneumonia"])
        assert row["error"] == "" and 0.0 <= prob <= 1.0
        assert row["label"] == ("PNEUMONIA" if prob >= 0.37 else "NORMAL")
        assert float(row["threshold"]) == pytest.approx(0.37)
        with torch.no_grad():
            expected = torch.sigmoid(model(transform(p)[None]))[0].item()
        assert prob == pytest.approx(expected, abs=2e-6)  # the CLI uses the model's own preprocessing

    error_lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == len(bad)
    for p in bad:
        row = rows[str(p)]
        assert row["label"] == "" and row["probability_pneumonia"] == ""
        assert row["error"] and "\n" not in row["error"] and p.name in row["error"]
        assert sum(p.name in line for line in error_lines) == 1, p.name


# The exit-code cases below call the same entry point in-process (`main` returns the exit status), which
# keeps the suite fast; the console script itself is exercised above.


def test_predict_all_good_exits_0_and_prints_csv(model_dir, tmp_path, capsys):
    good = write_good_images(tmp_path / "images")
    assert main(["predict", str(tmp_path / "images"), "--model", str(model_dir)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    rows = read_rows(out)
    assert set(rows) == {str(p) for p in good}
    assert all(row["label"] in ("NORMAL", "PNEUMONIA") and row["error"] == "" for row in rows.values())


def test_predict_without_model_uses_the_bundled_one_or_says_so(tmp_path, capsys):
    img = tmp_path / "x.png"
    make_test_image("L", (64, 64)).save(img)
    code = main(["predict", str(img)])
    out, err = capsys.readouterr()
    if (BUNDLED_MODEL_DIR / WEIGHTS_NAME).is_file():
        assert code == 0, err
        assert read_rows(out)[str(img)]["label"] in ("NORMAL", "PNEUMONIA")
    else:
        assert code == 2
        assert out == ""
        assert err.startswith("pneumonia-hf: error: no model is bundled") and "--model" in err
        assert len(err.strip().splitlines()) == 1


def test_predict_with_a_missing_model_folder_is_a_clear_error(tmp_path, capsys):
    img = tmp_path / "x.png"
    make_test_image("L", (64, 64)).save(img)
    empty = tmp_path / "no_weights"
    empty.mkdir()
    assert main(["predict", str(img), "--model", str(empty)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("pneumonia-hf: error: cannot load model") and len(err.strip().splitlines()) == 1
