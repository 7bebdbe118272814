"""The Gradio Space, launched for real on 127.0.0.1 and driven with gradio_client (no network beyond localhost)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia_hf import PneumoniaCNN
from space_helpers import REPO, launch_space, write_dicom, xray_files

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not xray_files(), reason="no chest X-rays under ../shared/data"),
]
THRESHOLD = 0.42  # not 0.5, so the test sees that the app uses the stored threshold
MAX_FILE_MB = 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A freshly initialised model saved with save_pretrained (the trained one is not needed here)."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model")
    PneumoniaCNN(threshold=THRESHOLD).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def space(model_dir, tmp_path_factory):
    """`python space/app.py` from the repository; yields (url, log path)."""
    log = tmp_path_factory.mktemp("space") / "app.log"
    with launch_space(REPO / "space" / "app.py", model_dir, log, PNEUMONIA_HF_MAX_FILE_MB=str(MAX_FILE_MB)) as s:
        yield s


@pytest.fixture(scope="module")
def client(space, tmp_path_factory) -> Client:
    return Client(space[0], verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def xray() -> Path:
    return xray_files()[0]


def classify(client: Client, path: Path):
    return client.predict(handle_file(str(path)), api_name="/classify")


def check_labelled(out, expect_threshold: float = THRESHOLD) -> dict:
    """A normal answer: label data with both classes, a decision at the stored threshold, a heat map."""
    label, text, cam, result = out
    assert {c["label"] for c in label["confidences"]} == {"NORMAL", "PNEUMONIA"}
    probs = result["probabilities"]
    assert sum(probs.values()) == pytest.approx(1.0)
    assert result["threshold"] == pytest.approx(expect_threshold) and f"{expect_threshold:.3f}" in text
    assert {c["label"]: c["confidence"] for c in label["confidences"]} == pytest.approx(probs)
    assert result["label"] == ("PNEUMONIA" if probs["PNEUMONIA"] >= expect_threshold else "NORMAL")
    assert f"Decision: **{result['label']}**" in text
    assert result["ood"] is False and result["ood_warning"] is None
    with Image.open(cam) as im:
        assert im.mode == "RGB" and min(im.size) >= 64
    return result


def test_runs_from_the_repo_source_tree(space):
    assert f"pneumonia_hf from {REPO / 'pneumonia_hf'}" in space[1].read_text()


def test_api_exposes_classify(client):
    assert "/classify" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]


def test_real_xray_gets_probabilities_decision_and_gradcam(client, xray):
    result = check_labelled(classify(client, xray))
    assert result["model"]


def test_dicom_upload_monochrome1_and_2_agree(client, xray, tmp_path):
    gray = np.asarray(Image.open(xray).convert("L"))
    p1 = check_labelled(classify(client, write_dicom(tmp_path / "m1.dcm", gray, "MONOCHROME1")))["probabilities"]
    p2 = check_labelled(classify(client, write_dicom(tmp_path / "m2.dcm", gray, "MONOCHROME2")))["probabilities"]
    assert p1["PNEUMONIA"] == pytest.approx(p2["PNEUMONIA"], abs=1e-4)


def test_png_named_jpg_still_works(client, xray, tmp_path):
    path = tmp_path / "really_a_png.jpg"
    Image.open(xray).convert("L").save(path, format="PNG")
    check_labelled(classify(client, path))


@pytest.mark.parametrize("kind", ["colour_photo", "document"])
def test_not_an_xray_gets_a_warning_instead_of_a_label(client, tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "colour_photo":
        yy, xx = np.mgrid[0:300, 0:400]
        Image.fromarray(np.stack([xx * 255 // 400, yy * 255 // 300, 90 + 0 * xx], -1).astype(np.uint8)).save(path)
    else:
        from PIL import ImageDraw

        im = Image.new("L", (600, 800), 250)
        for y in range(40, 760, 22):
            ImageDraw.Draw(im).text((40, y), "Lorem ipsum dolor sit amet, invoice total due", fill=0)
        im.save(path)
    label, text, cam, result = classify(client, path)
    assert result["ood"] is True and result["label"] is None and cam is None
    assert "does not look like a frontal chest X-ray" in result["ood_warning"] and "Not a chest X-ray" in text
    assert not label or label.get("label") is None
    if kind == "colour_photo":
        assert any("colour" in r for r in result["ood_reasons"])


def _bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, format="PNG")  # 81 megapixels in a few kB
    return buf.getvalue()


BAD_INPUTS = {
    # name: (file name, bytes or a callable making them, expected message fragment)
    "zero_bytes": ("empty.png", b"", "empty file (0 bytes)"),
    "truncated_jpeg": ("cut.jpeg", lambda x: x.read_bytes()[:3000], "corrupt or truncated"),
    "text_renamed_png": ("notes.png", b"just some notes, not pixels\n" * 40, "not an image file"),
    "wrong_extension": ("notes.txt", b"just some notes\n", "Invalid file type"),
    "decompression_bomb": ("bomb.png", lambda x: _bomb_png(), "decompression bomb"),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_gets_a_clear_error(client, xray, tmp_path, kind):
    name, content, message = BAD_INPUTS[kind]
    path = tmp_path / name
    path.write_bytes(content(xray) if callable(content) else content)
    with pytest.raises(AppError) as e:
        classify(client, path)
    assert message in str(e.value) and "Traceback" not in str(e.value)


def test_over_size_upload_is_refused(client, space, tmp_path):
    import httpx

    big = tmp_path / "big.png"
    big.write_bytes(np.random.default_rng(0).bytes((MAX_FILE_MB + 1) * 2**20))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks first
        classify(client, big)
    with open(big, "rb") as f:  # and the server refuses it on its own (launch(max_file_size=...))
        r = httpx.post(f"{space[0]}/gradio_api/upload", files={"files": ("big.png", f)}, timeout=60)
    assert r.status_code == 413 and "maximum allowed size" in r.text


def test_still_serves_after_bad_inputs(client, xray):
    check_labelled(classify(client, xray))


def test_deploy_assembles_a_folder_that_runs(model_dir, tmp_path, xray):
    import gradio

    out = tmp_path / "space-build"
    cmd = [sys.executable, str(REPO / "space" / "deploy.py"), "--dry-run", "--out", str(out),
           "--model-repo-id", "someone/pneumonia-cnn"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert run.returncode == 0, run.stderr
    assert "nothing uploaded" in run.stdout
    for f in ["app.py", "README.md", "requirements.txt", "pneumonia_hf/__init__.py", "pneumonia_hf/ood.py",
              "pneumonia_hf/explain.py", "pneumonia_hf/preprocessing.py"]:
        assert (out / f).is_file(), f
    assert not list(out.rglob("__pycache__"))
    header = (out / "README.md").read_text().split("---")[1]
    for line in ["sdk: gradio", f"sdk_version: {gradio.__version__}", "app_file: app.py", "  - someone/pneumonia-cnn"]:
        assert line in header.splitlines(), line

    log = tmp_path / "deployed.log"
    with launch_space(out / "app.py", model_dir, log, cwd=out) as (url, _):
        assert f"pneumonia_hf from {out / 'pneumonia_hf'}" in log.read_text()
        check_labelled(classify(Client(url, verbose=False, download_files=str(tmp_path / "dl")), xray))
