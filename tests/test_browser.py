"""A real browser (Debian's chromium through Playwright) uploads an X-ray to the launched Space."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from pneumonia_hf import PneumoniaCNN
from pneumonia_hf.inference import BUNDLED_MODEL_DIR
from space_helpers import REPO, launch_space, xray_files

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 120_000  # a 2-core machine busy with training renders slowly

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}"),
    pytest.mark.skipif(not xray_files(), reason="no chest X-rays under ../shared/data"),
]


@pytest.mark.parametrize("which", ["fresh", "bundled"])
def test_upload_shows_notice_label_and_gradcam(tmp_path, which):
    if which == "bundled":
        if not (BUNDLED_MODEL_DIR / "model.safetensors").is_file():
            pytest.skip("no bundled model")
        model_dir, threshold = BUNDLED_MODEL_DIR, PneumoniaCNN.from_pretrained(BUNDLED_MODEL_DIR).threshold
    else:
        torch.manual_seed(0)
        model_dir, threshold = tmp_path / "model", 0.6
        PneumoniaCNN(threshold=threshold).save_pretrained(model_dir)
    examples = tmp_path / "examples"  # the example gallery reads a folder named by PNEUMONIA_HF_EXAMPLES
    examples.mkdir()
    for f in xray_files(n=2):
        shutil.copy(f, examples / f.name)
    shots = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / f"space_upload_{which}.png"

    with launch_space(REPO / "space" / "app.py", model_dir, tmp_path / "app.log",
                      PNEUMONIA_HF_EXAMPLES=str(examples)) as (url, _):
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1100})
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(url, wait_until="domcontentloaded", timeout=TIMEOUT_MS)
                notice = page.locator("#notice")
                sync_api.expect(notice).to_contain_text("not a medical device", timeout=TIMEOUT_MS)

                page.locator("input[type=file]").first.set_input_files(str(xray_files()[0]))  # upload runs /classify
                decision = page.locator("#decision")
                sync_api.expect(decision).to_contain_text("Decision:", timeout=TIMEOUT_MS)
                sync_api.expect(decision).to_contain_text(f"{threshold:.3f}", timeout=TIMEOUT_MS)
                label = page.locator("#label")
                sync_api.expect(label).to_contain_text(re.compile("NORMAL|PNEUMONIA"), timeout=TIMEOUT_MS)
                sync_api.expect(page.locator("#gradcam img").first).to_be_visible(timeout=TIMEOUT_MS)
                label_text, decision_text = label.inner_text(), decision.inner_text()
                page.wait_for_timeout(500)  # let the image finish painting before the screenshot
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()

    print(f"\nlabel text: {label_text!r}\ndecision text: {decision_text!r}\nscreenshot: {shot}")
    assert "PNEUMONIA" in label_text and "NORMAL" in label_text and "%" in label_text  # both probabilities
    assert re.search(r"Decision: (NORMAL|PNEUMONIA)", decision_text)
    assert shot.stat().st_size > 10_000
