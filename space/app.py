"""Gradio Space: upload a chest X-ray (JPEG, PNG or DICOM), get a calibrated answer and where the model looked.

    python space/app.py                      # the bundled checkpoint
    PNEUMONIA_HF_MODEL=DIR_OR_REPO_ID python space/app.py

Environment: PNEUMONIA_HF_MODEL (model folder or Hub repo id; default: the checkpoint bundled in
pneumonia_hf/pretrained), PNEUMONIA_HF_EXAMPLES (folder of example images, optional),
PNEUMONIA_HF_MAX_FILE_MB (upload limit, default 50), plus gradio's GRADIO_SERVER_NAME/GRADIO_SERVER_PORT.
The app is a thin UI around the package's public API: `load_model`, `read_image` + `build_eval_transform`
(the one preprocessing path), `check_ood` and `gradcam`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path

HERE = Path(__file__).resolve().parent
# From the repo (space/app.py) use the source tree next to it, installed or not; in an assembled
# deploy folder pneumonia_hf/ sits beside app.py and Python already finds it first.
if not (HERE / "pneumonia_hf").is_dir() and (HERE.parent / "pneumonia_hf" / "__init__.py").is_file():
    sys.path.insert(0, str(HERE.parent))

import gradio as gr  # noqa: E402
import torch  # noqa: E402

import pneumonia_hf  # noqa: E402
from pneumonia_hf import ImageLoadError, load_model  # noqa: E402
from pneumonia_hf.explain import gradcam, overlay  # noqa: E402
from pneumonia_hf.inference import NoBundledModelError  # noqa: E402
from pneumonia_hf.ood import check_ood  # noqa: E402
from pneumonia_hf.preprocessing import DICOM_SUFFIXES, build_eval_transform, read_image, to_grayscale  # noqa: E402

MODEL_ENV = "PNEUMONIA_HF_MODEL"
EXAMPLES_ENV = "PNEUMONIA_HF_EXAMPLES"
MAX_FILE_MB_ENV = "PNEUMONIA_HF_MAX_FILE_MB"
MAX_EXAMPLES = 8
FILE_TYPES = [".jpg", ".jpeg", ".png", *DICOM_SUFFIXES]

NOTICE = (
    "⚠️ **Research demo, not a medical device.** This model was trained on one public set of pediatric "
    "frontal chest X-rays; it has not been clinically validated and must not be used for diagnosis or "
    "treatment decisions. Do not upload images that identify a patient."
)


def max_file_bytes() -> int:
    """Upload limit in bytes, from PNEUMONIA_HF_MAX_FILE_MB (default 50 MB: an uncompressed 16-bit DICOM fits)."""
    raw = os.environ.get(MAX_FILE_MB_ENV, "50")
    try:
        return int(float(raw) * 1024 * 1024)
    except ValueError:
        sys.exit(f"space/app.py: {MAX_FILE_MB_ENV} must be a number of megabytes, got {raw!r}")


def example_files(folder: str | None = None) -> list[str]:
    """Up to MAX_EXAMPLES image/DICOM files from PNEUMONIA_HF_EXAMPLES; the repo ships no X-rays."""
    folder = folder if folder is not None else os.environ.get(EXAMPLES_ENV)
    if not folder or not Path(folder).is_dir():
        return []
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in FILE_TYPES)
    return [str(p) for p in files[:MAX_EXAMPLES]]


class Classifier:
    """The model plus everything one request needs; `__call__` is the `/classify` endpoint."""

    def __init__(self, model: torch.nn.Module, model_id: str, keep_outputs: int = 64):
        self.model, self.model_id = model.eval(), model_id
        self.transform = build_eval_transform(model)
        # Grad-CAM hooks the shared model's last stage, and those hooks would also catch a forward pass
        # running in another request's thread: model work is serialised, decoding and drawing are not.
        self.model_lock = threading.Lock()
        self.out_dir = Path(tempfile.mkdtemp(prefix="pneumonia-space-"))
        atexit.register(shutil.rmtree, self.out_dir, ignore_errors=True)
        self._recent: deque[str] = deque()
        self._recent_lock = threading.Lock()
        self.keep_outputs = keep_outputs

    def save_output(self, image) -> str:
        """Write an output image to a file of its own and return the path.

        gradio copies a returned file into its cache atomically, whereas a returned PIL image is
        re-written in place under a content hash, which truncates the file while another client of an
        identical answer may be downloading it. Only the last `keep_outputs` files are kept here.
        """
        folder = tempfile.mkdtemp(dir=self.out_dir)
        path = os.path.join(folder, "gradcam.png")
        image.save(path, format="PNG")
        with self._recent_lock:
            self._recent.append(folder)
            while len(self._recent) > self.keep_outputs:
                shutil.rmtree(self._recent.popleft(), ignore_errors=True)
        return path

    def predict(self, path: str) -> tuple[dict, str | None]:
        """File path -> (structured result, Grad-CAM overlay PNG path or None); raises gr.Error for bad input."""
        if not path:
            raise gr.Error("No file received: upload a chest X-ray (JPEG, PNG or DICOM).")
        name = Path(path).name
        try:
            size = os.path.getsize(path)
        except OSError:
            raise gr.Error(f"{name}: the upload could not be read; please try again.") from None
        if size > max_file_bytes():
            raise gr.Error(f"{name}: {size / 2**20:.1f} MB is over the {max_file_bytes() / 2**20:.0f} MB upload limit.")
        try:
            image = read_image(path)  # original mode: the OOD checks need the colour
            x = self.transform(image)  # (C, S, S), the same path as training's validation and the CLI
        except ImageLoadError as e:
            raise gr.Error(f"Cannot use this file: {e}") from None
        m = self.model
        with self.model_lock, torch.inference_mode():
            feats = m.forward_features(x.unsqueeze(0))  # (1, F, h, w)
            p = torch.sigmoid(m.forward_head(feats)).item()
            emb = m.forward_head(feats, pre_logits=True)  # (1, F)
        ood = check_ood(image, m, embedding=emb)
        probs = {m.labels[0]: 1.0 - p, m.labels[1]: p}
        decision = m.labels[int(p >= m.threshold)]
        result = {
            "label": None if ood.is_ood else decision,
            "probabilities": probs,
            "threshold": m.threshold,
            "ood": ood.is_ood,
            "ood_warning": ood.warning,
            "ood_reasons": ood.reasons,
            "gradcam_peak": None,  # set below: 1.0, or 0.0 when the Grad-CAM map is blank (None when OOD)
            "model": self.model_id,
        }
        if ood.is_ood:
            return result, None
        with self.model_lock:
            heat = gradcam(m, x, target=m.labels.index(decision))
        result["gradcam_peak"] = float(heat.max())  # 1, or 0 when no region raised the decided class's score
        return result, self.save_output(overlay(to_grayscale(image), heat))

    def __call__(self, path: str | None):
        """UI/API handler: (label, decision text, Grad-CAM overlay, structured JSON)."""
        try:
            result, cam = self.predict(path)
        except gr.Error:
            raise
        except Exception as e:  # never let one odd file take the app down; say what happened
            raise gr.Error(f"Unexpected error while analysing this file ({type(e).__name__}).") from e
        if result["ood"]:
            text = f"### ⚠️ Not a chest X-ray?\n{result['ood_warning']}"
            return None, text, None, result
        p, t = result["probabilities"][self.model.labels[1]], result["threshold"]
        rel = "≥" if p >= t else "<"
        text = (
            f"### Decision: **{result['label']}**\n"
            f"P({self.model.labels[1].lower()}) = **{p:.3f}** {rel} the model's operating threshold **{t:.3f}** "
            f"(stored with the weights in `config.json`)."
        )
        if result["gradcam_peak"] == 0:
            text += "\n\nGrad-CAM found no region that raised this class's score, so the map is blank."
        return result["probabilities"], text, cam, result


def build_demo(classifier: Classifier, examples: list[str] | None = None) -> gr.Blocks:
    """The Blocks UI; the classify event is exposed to clients as `/classify`."""
    m = classifier.model
    with gr.Blocks(title="Pneumonia chest X-ray classifier") as demo:
        gr.Markdown(
            "# Pneumonia on pediatric chest X-rays\n"
            "Upload a frontal chest X-ray (JPEG, PNG or DICOM). You get the probability of each class, the decision "
            f"at the model's operating threshold ({m.threshold:.3f}) and a Grad-CAM map of where the model looked."
        )
        gr.Markdown(NOTICE, elem_id="notice")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Chest X-ray (JPEG, PNG or DICOM)", file_types=FILE_TYPES, type="filepath")
                button = gr.Button("Analyse", variant="primary")
                cam = gr.Image(label="Grad-CAM: where the model looked", type="filepath", format="png", elem_id="gradcam")
            with gr.Column():
                # No arg-max heading: the decision uses the model's threshold and is stated below.
                label = gr.Label(label="Class probabilities", num_top_classes=2, show_heading=False, elem_id="label")
                decision = gr.Markdown(elem_id="decision")
                result = gr.JSON(label="Result (as returned to API clients)", open=False)
        outputs = [label, decision, cam, result]
        if examples:
            gr.Examples(examples=[[f] for f in examples], inputs=[upload], outputs=outputs, fn=classifier,
                        run_on_click=True, cache_examples=False)
        gr.on([button.click, upload.upload], classifier, inputs=upload, outputs=outputs, api_name="classify",
              concurrency_limit=2)
        gr.Markdown(
            f"Model: `{classifier.model_id}` · labels {m.labels} · input {m.image_size}×{m.image_size} · "
            "Grad-CAM: captum `LayerGradCam` on the last conv stage."
        )
    return demo


def main() -> None:
    """Load the model named by PNEUMONIA_HF_MODEL (default: the bundled one) and serve the app."""
    model_id = os.environ.get(MODEL_ENV) or None
    try:
        model = load_model(model_id)
    except NoBundledModelError as e:
        sys.exit(f"space/app.py: {e} (or set {MODEL_ENV})")
    except Exception as e:  # a wrong PNEUMONIA_HF_MODEL: say which and why, in one line
        sys.exit(f"space/app.py: cannot load model {model_id!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    model_name = model_id or "bundled checkpoint (pneumonia_hf/pretrained)"
    print(f"pneumonia_hf from {Path(pneumonia_hf.__file__).parent}; model {model_name}", flush=True)
    demo = build_demo(Classifier(model, model_name), example_files())
    demo.queue(max_size=64, default_concurrency_limit=2)
    demo.launch(max_file_size=max_file_bytes(), show_error=False, footer_links=["api", "gradio", "settings"])


if __name__ == "__main__":
    main()
