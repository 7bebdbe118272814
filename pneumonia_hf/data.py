"""Data: load a labelled X-ray source with `datasets`, decode and resize it once, patient-grouped folds, samplers."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .preprocessing import ImageLoadError, load_image, preprocess_config, prepare_image

logger = logging.getLogger(__name__)
LABELS = ("NORMAL", "PNEUMONIA")

# person1203_bacteria_3154.jpeg -> person1203 ; IM-0115-0001.jpeg -> IM-0115 ; NORMAL2-IM-0588-0001 -> NORMAL2-IM-0588
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE),
)


def patient_id(path: str | None) -> str | None:
    """Patient id from a Kermany file name, or None when the name does not follow the known patterns."""
    if not path:
        return None
    stem = Path(path).stem
    for pat in _PATIENT_PATTERNS:
        m = pat.match(stem)
        if m:
            return m.group(1)
    return None


def _label_map(names: Sequence[str]) -> dict[int, int]:
    """Map a source's label indices to NORMAL=0 / PNEUMONIA=1, whatever order the source uses."""
    upper = [n.upper() for n in names]
    missing = [lab for lab in LABELS if lab not in upper]
    if missing:
        raise ValueError(f"the data source has labels {list(names)}; it needs both NORMAL and PNEUMONIA (missing {missing})")
    return {i: LABELS.index(n) for i, n in enumerate(upper) if n in LABELS}


def load_source(source: str, split: str = "train"):
    """A `datasets.Dataset` with columns image (undecoded), label (NORMAL=0/PNEUMONIA=1), path, patient."""
    from datasets import ClassLabel, DatasetDict, Image, load_dataset

    p = Path(source)
    if p.is_dir() and any(p.rglob("*.parquet")):
        dsd = load_dataset(str(p))  # a Hub-style snapshot: splits come from the file names (train-*, test-*)
    elif p.is_dir():
        dsd = load_dataset("imagefolder", data_dir=str(p))
        if all("label" not in d.column_names for d in dsd.values()):
            # imagefolder drops the label column when it finds a single class folder
            raise ValueError(f"{source}: found no class labels; an image folder needs NORMAL/ and PNEUMONIA/ "
                             "subfolders (both classes are needed)")
    elif p.suffix == ".parquet":
        dsd = load_dataset("parquet", data_files={split: str(p)})
    elif p.exists():
        raise ValueError(f"{source}: expected an image folder, a parquet file or a Hub dataset id")
    else:
        dsd = load_dataset(source)
    if isinstance(dsd, DatasetDict):
        if split not in dsd:
            raise ValueError(f"{source} has no split {split!r}; it has {list(dsd)}")
        ds = dsd[split]
    else:
        ds = dsd
    if "image" not in ds.column_names or "label" not in ds.column_names:
        raise ValueError(f"{source} needs 'image' and 'label' columns, it has {ds.column_names}")
    feat = ds.features["label"]
    if isinstance(feat, ClassLabel):
        mapping = _label_map(feat.names)
    else:  # plain strings or ints: take the names as they are
        values = sorted(set(ds["label"]))
        mapping = _label_map([str(v) for v in values])
        mapping = {v: mapping[i] for i, v in enumerate(values) if i in mapping}  # other classes are dropped
    ds = ds.cast_column("image", Image(decode=False))
    keep = [i for i, lab in enumerate(ds["label"]) if lab in mapping]
    if len(keep) < len(ds):
        ds = ds.select(keep)
    paths = [im.get("path") for im in ds["image"]]
    patients = [patient_id(pth) for pth in paths]
    if not any(patients):
        logger.warning("no patient ids in %s's file names: folds fall back to one group per image", source)
    patients = [pt or f"image-{i}" for i, pt in enumerate(patients)]
    ds = ds.add_column("path", [pth or f"{split}-{i}" for i, pth in enumerate(paths)])
    ds = ds.add_column("patient", patients)
    ds = ds.map(lambda b: {"label": [mapping[x] for x in b["label"]]}, batched=True, features=None)
    ds = ds.cast_column("label", ClassLabel(names=list(LABELS)))
    labels = np.asarray(ds["label"])
    if len(np.unique(labels)) < 2:
        raise ValueError(f"{source}:{split} holds only {LABELS[labels[0]] if len(labels) else 'no'} images; both classes are needed")
    return ds


def _decode_batch(batch: dict[str, list], cfg: dict) -> dict[str, list]:
    """Decode + resize a batch of images once; unreadable ones are flagged, not fatal."""
    pixels, ok, errors = [], [], []
    blank = np.zeros((cfg["in_channels"], cfg["image_size"], cfg["image_size"]), np.uint8)
    for im in batch["image"]:
        try:
            src = im["bytes"] if im.get("bytes") else im["path"]
            pixels.append(prepare_image(load_image(src), cfg).numpy())
            ok.append(True)
            errors.append("")
        except Exception as e:  # one odd file must not stop a run: it is skipped and counted
            if not isinstance(e, ImageLoadError):
                e = f"{type(e).__name__}: {e}"
            pixels.append(blank)
            ok.append(False)
            errors.append(str(e))
    return {"pixels": pixels, "ok": ok, "error": errors}


def decode_dataset(ds, config: Any, desc: str = "decode + resize"):
    """Cached `datasets.map`: add uint8 `pixels` (C, S, S); drop and count unreadable images.

    Returns (dataset, skipped) where skipped lists (path, reason) of dropped images.
    """
    from datasets import Array3D, Features, Value

    cfg = preprocess_config(config)
    shape = (int(cfg["in_channels"]), int(cfg["image_size"]), int(cfg["image_size"]))
    features = Features({**ds.features, "pixels": Array3D(shape, "uint8"), "ok": Value("bool"), "error": Value("string")})
    # datasets fingerprints a module-level function by name only: key the cache on the preprocessing code too,
    # so an edit to it can never serve stale pixels to training while the CLI and Space use the new code.
    from datasets.fingerprint import Hasher

    code = Path(__file__).with_name("preprocessing.py").read_text() + inspect.getsource(_decode_batch)
    fingerprint = Hasher.hash((ds._fingerprint, cfg, code))
    out = ds.map(_decode_batch, batched=True, batch_size=64, fn_kwargs={"cfg": cfg}, features=features, desc=desc,
                 new_fingerprint=fingerprint)
    bad = [i for i, k in enumerate(out["ok"]) if not k]
    skipped = [(out[i]["path"], out[i]["error"]) for i in bad]
    for pth, why in skipped:
        logger.warning("skipping unreadable image %s: %s", pth, why)
    if bad:
        bad_set = set(bad)
        out = out.select([i for i in range(len(out)) if i not in bad_set])
    return out, skipped


def to_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """All decoded pixels and labels as in-memory tensors: (N, C, S, S) uint8 and (N,) int64."""
    t = ds.with_format("numpy", columns=["pixels", "label"])[:]
    return torch.from_numpy(np.ascontiguousarray(t["pixels"], dtype=np.uint8)), torch.from_numpy(t["label"]).long()


def build_folds(labels: Sequence[int], groups: Sequence[str], n_folds: int, seed: int) -> np.ndarray:
    """Fold index per row from StratifiedGroupKFold: no patient in two folds, class ratio kept per fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels, groups = np.asarray(labels), np.asarray(groups)
    if len(np.unique(groups)) < n_folds:
        raise ValueError(f"{len(np.unique(groups))} patients cannot fill {n_folds} folds")
    fold = np.full(len(labels), -1, dtype=int)
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val_idx) in enumerate(cv.split(np.zeros(len(labels)), labels, groups)):
        fold[val_idx] = k
    return fold


def grouped_subset(labels: Sequence[int], groups: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a stratified, patient-grouped subset holding about `fraction` of the rows."""
    if fraction >= 1:
        return np.ones(len(labels), bool)
    n = max(2, round(1 / fraction))
    return build_folds(labels, groups, n, seed) == 0


class XrayTensorDataset(torch.utils.data.Dataset):
    """In-memory decoded images; yields (uint8 (C, S, S), label). Augmentation runs per batch in training."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor):
        self.pixels, self.labels = pixels, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pixels[i], self.labels[i]


class BalancedSampler(torch.utils.data.Sampler[int]):
    """Per-epoch index stream for class imbalance: `weighted` draws with WeightedRandomSampler (inverse class
    frequency), `oversample` repeats minority rows up to the majority count, `none` is a plain shuffle.

    Seeded by (seed, epoch), so every process of a distributed run, and a resumed run, sees the same stream.
    """

    def __init__(self, labels: torch.Tensor, mode: str, seed: int):
        self.labels, self.mode, self.seed, self.epoch = labels.long(), mode, seed, 0
        counts = torch.bincount(self.labels, minlength=2).clamp(min=1)
        self.n = len(labels) if mode != "oversample" else int(counts.max()) * 2

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        if self.mode == "weighted":
            counts = torch.bincount(self.labels, minlength=2).double()
            w = (1.0 / counts)[self.labels]
            idx = torch.tensor(list(torch.utils.data.WeightedRandomSampler(w, self.n, True, generator=g)))
        elif self.mode == "oversample":
            parts = []
            target = self.n // 2
            for c in (0, 1):
                rows = torch.nonzero(self.labels == c).squeeze(1)
                reps = rows.repeat(target // len(rows) + 1)[: target - len(rows)] if len(rows) < target else rows[:0]
                parts += [rows, reps]
            idx = torch.cat(parts)
            idx = idx[torch.randperm(len(idx), generator=g)]
        else:
            idx = torch.randperm(len(self.labels), generator=g)
        return iter(idx.tolist())
