"""Loading the default or a named model, and batch prediction over files that may be broken."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .model import WEIGHTS_NAME, PneumoniaCNN
from .preprocessing import ImageLoadError, ImageSource, build_eval_transform

# The checkpoint shipped inside the package (Hub layout: model.safetensors, config.json, README.md).
BUNDLED_MODEL_DIR = Path(__file__).parent / "pretrained"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".dcm", ".dicom"}


class NoBundledModelError(FileNotFoundError):
    """Raised when no --model is given and the package ships no trained checkpoint."""


def bundled_model_dir() -> Path:
    """Directory of the checkpoint that ships with the package, or a clear error when there is none."""
    if not (BUNDLED_MODEL_DIR / WEIGHTS_NAME).is_file():
        raise NoBundledModelError(
            f"no model is bundled with this install of pneumonia-hf ({BUNDLED_MODEL_DIR} holds no {WEIGHTS_NAME}); "
            "pass --model DIR_OR_REPO_ID"
        )
    return BUNDLED_MODEL_DIR


def load_model(name_or_path: str | os.PathLike | None = None, **kwargs) -> PneumoniaCNN:
    """`PneumoniaCNN.from_pretrained` on a local folder or Hub repo id; None means the bundled model."""
    src = bundled_model_dir() if name_or_path is None else name_or_path
    return PneumoniaCNN.from_pretrained(src, **kwargs)


def decide(model: PneumoniaCNN, probability: float) -> str:
    """Label name for P(pneumonia) at the model's stored operating threshold."""
    return model.labels[int(probability >= model.threshold)]


@dataclass
class Prediction:
    """One file's result: a label and P(pneumonia), or an error message."""

    path: str
    label: str | None = None
    probability_pneumonia: float | None = None
    error: str | None = None


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, plus image files found recursively in folders, in a stable order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)  # missing or odd files are reported per file by predict_files
    return out


def _batches(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


@torch.inference_mode()
def predict_files(
    model: PneumoniaCNN, sources: list[ImageSource], batch_size: int = 32, progress: bool = False
) -> list[Prediction]:
    """Classify each source; a file that cannot be read gets `error` and the rest still run."""
    from tqdm.auto import tqdm

    model.eval()
    transform = build_eval_transform(model)
    results: list[Prediction] = []
    bar = tqdm(total=len(sources), unit="img", disable=not progress, desc="predict")
    for chunk in _batches(list(sources), batch_size):
        tensors, ok = [], []
        for src in chunk:
            res = Prediction(path=str(src))
            try:
                tensors.append(transform(src))
                ok.append(res)
            except ImageLoadError as e:
                res.error = str(e)
            except Exception as e:  # anything else odd about one file must not sink the batch
                res.error = f"{Path(str(src)).name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            results.append(res)
        if tensors:
            probs = torch.sigmoid(model(torch.stack(tensors))).tolist()
            for res, p in zip(ok, probs):
                res.probability_pneumonia, res.label = p, decide(model, p)
        bar.update(len(chunk))
    bar.close()
    return results
