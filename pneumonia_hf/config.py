"""The training config: one dataclass is the source of truth for the CLI, the run folder and the model."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

MODEL_KEYS = ("in_channels", "stem_width", "widths", "depths", "dropout", "image_size", "mean", "std", "equalize")


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as `train_config.json` next to its outputs."""

    # data
    data: str = "hf-vision/chest-xray-pneumonia"  # Hub id, local image folder, or parquet file(s)
    split: str = "train"
    output_dir: str = "runs/default"
    max_samples: int = 0  # 0 = all; else a stratified, patient-grouped subset (for smoke runs)
    # cross-validation
    folds: int = 5
    only_folds: list[int] = field(default_factory=list)  # run just these folds (e.g. 0), default all
    final_fit: bool = True  # after CV, train on all data and save the model
    # model (forwarded to PneumoniaCNN)
    arch: str = "pneumonia-cnn"  # or a torchvision classifier name (e.g. resnet18) for baselines, with --no-final-fit
    in_channels: int = 1
    stem_width: int = 16
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    depths: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    dropout: float = 0.2
    image_size: int = 128
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.25])
    equalize: bool = True  # histogram equalisation in preprocessing: invariance to exposure/contrast (shipped recipe)
    # imbalance handling
    sampler: str = "weighted"  # none | weighted (WeightedRandomSampler) | oversample (minority copies)
    loss: str = "bce"  # bce | weighted-bce | focal
    focal_alpha: float = 0.25  # weight of the positive (pneumonia) class in focal loss
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    # augmentation
    augment: str = "medium"  # none | light | medium | strong
    minority_augment: str = ""  # augmentation level for NORMAL images ("" = same as --augment)
    # optimisation
    epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    grad_clip: float = 2.0
    mixed_precision: str = "no"  # no | bf16 | fp16
    early_stopping_patience: int = 0  # 0 = off (train all epochs); else stop on the inner validation split
    monitor: str = "roc_auc"  # metric watched by early stopping (inner validation split, never the outer fold)
    inner_val_fraction: float = 0.1
    # decision threshold, chosen on out-of-fold predictions
    threshold_rule: str = "youden"  # youden | sensitivity
    target_sensitivity: float = 0.97
    calibrate: bool = True  # Platt-scale on out-of-fold predictions and fold the scaling into the final head
    threshold_on: str = "shifted"  # clean: OOF predictions; shifted: OOF predictions plus their 9 perturbed copies
    # run control
    seed: int = 42
    num_workers: int = 0
    resume: bool = False
    push_to_hub: str = ""  # repo id to upload the final model to
    progress: bool = True

    def model_kwargs(self) -> dict[str, Any]:
        """The subset of the config that `PneumoniaCNN(**kwargs)` takes."""
        return {k: getattr(self, k) for k in MODEL_KEYS}

    def save(self, path: str | Path) -> None:
        """Write the resolved config as JSON."""
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """Read a config written by `save`."""
        return cls(**json.loads(Path(path).read_text()))

    def validate(self) -> None:
        """Raise ValueError on inconsistent settings, before any work starts."""
        choices = {
            "sampler": ("none", "weighted", "oversample"),
            "loss": ("bce", "weighted-bce", "focal"),
            "augment": ("none", "light", "medium", "strong"),
            "minority_augment": ("", "none", "light", "medium", "strong"),
            "threshold_rule": ("youden", "sensitivity"),
            "threshold_on": ("clean", "shifted"),
            "mixed_precision": ("no", "bf16", "fp16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.monitor not in ("loss", "roc_auc", "pr_auc", "accuracy", "f1", "recall", "specificity", "precision"):
            raise ValueError(f"--monitor must be loss or a higher-is-better metric (roc_auc, pr_auc, f1, ...), got {self.monitor!r}")
        if not 0 < self.inner_val_fraction < 0.5:
            raise ValueError("--inner-val-fraction must be in (0, 0.5)")
        if not 0 < self.target_sensitivity <= 1:
            raise ValueError("--target-sensitivity must be in (0, 1]")
        if self.arch != "pneumonia-cnn":
            import torchvision

            if not hasattr(torchvision.models, self.arch):
                raise ValueError(f"--arch {self.arch!r} is not a torchvision model")
        if self.arch != "pneumonia-cnn" and self.final_fit:
            raise ValueError(f"--arch {self.arch} is for CV baselines only: add --no-final-fit")
        if self.folds < 2:
            raise ValueError("--folds must be at least 2 (patient-grouped cross-validation)")
        if any(not 0 <= f < self.folds for f in self.only_folds):
            raise ValueError(f"--only-folds must be in 0..{self.folds - 1}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("--epochs and --batch-size must be at least 1")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError("--mean and --std need one value per input channel")


def build_arg_parser() -> argparse.ArgumentParser:
    """An argparse parser generated from TrainConfig's fields, so flags and config never drift apart."""
    p = argparse.ArgumentParser(
        description="Train pneumonia-hf with patient-grouped stratified cross-validation (Accelerate).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif f.type.startswith("list"):
            elem = int if "int" in f.type else float
            p.add_argument(flag, nargs="*", type=elem, default=default)
        else:
            p.add_argument(flag, type={"int": int, "float": float, "str": str}[f.type], default=default)
    return p


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Parse the command line into a validated TrainConfig."""
    ns = build_arg_parser().parse_args(argv)
    cfg = TrainConfig(**vars(ns))
    cfg.validate()
    return cfg


__all__ = ["TrainConfig", "build_arg_parser", "parse_config"]
