"""`pneumonia-hf evaluate`: score a saved model on any labelled source, with the same preprocessing as serving."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


@torch.inference_mode()
def map_batches(fn: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, config: Any, device: torch.device,
                batch_size: int = 128, progress: bool = False) -> torch.Tensor:
    """fn(normalised batch) over cached uint8 images (N, C, S, S) in batches on `device`; results concatenated on the CPU."""
    from tqdm.auto import tqdm

    from .preprocessing import normalize

    out = [fn(normalize(pixels[i:i + batch_size].to(device), config)).float().cpu()
           for i in tqdm(range(0, len(pixels), batch_size), desc="evaluate", disable=not progress, leave=False)]
    return torch.cat(out) if out else torch.zeros(0)


def predict_pixels(model: torch.nn.Module, pixels: torch.Tensor, batch_size: int = 128, progress: bool = True,
                   config: Any = None) -> np.ndarray:
    """P(pneumonia) for cached uint8 images (N, C, S, S); normalised with `config` (default: the model's own)."""
    model.eval()
    device = next(model.parameters()).device
    return map_batches(lambda x: torch.sigmoid(model(x)), pixels, model if config is None else config, device,
                       batch_size, progress).numpy()


def evaluate_model(model_name_or_path: str | None, data: str, split: str = "test", output_dir: str | Path = "eval",
                   batch_size: int = 128, max_samples: int | None = None) -> dict:
    """Metrics at the model's stored threshold (JSON), per-image predictions (CSV) and plots (PNG) in output_dir."""
    import csv

    from .data import decode_dataset, load_source, to_tensors
    from .inference import load_model
    from .metrics import binary_metrics
    from .plots import plot_evaluation

    model = load_model(model_name_or_path)
    ds = load_source(data, split)
    if max_samples:
        ds = ds.shuffle(seed=0).select(range(min(max_samples, len(ds))))
    ds, skipped = decode_dataset(ds, model)  # the cached prepare_image output: the eval transform minus normalize
    pixels, labels = to_tensors(ds)
    prob = predict_pixels(model, pixels, batch_size)
    y = labels.numpy()
    metrics = binary_metrics(y, prob, model.threshold)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"model": str(model_name_or_path or "bundled"), "data": data, "split": split, "n": int(len(y)),
               "skipped": [{"path": p, "reason": r} for p, r in skipped], "metrics": metrics}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "probability_pneumonia", "prediction"])
        for pth, yy, pp in zip(ds["path"], y, prob):
            w.writerow([pth, int(yy), f"{pp:.6f}", int(pp >= model.threshold)])
    plot_evaluation(y, prob, model.threshold, out, title=f"({split})")
    return summary
