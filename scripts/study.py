"""Run a grid of train.py configurations under the same folds, budget and seed; write a Markdown table.

    python scripts/study.py imbalance --data ../shared/data/chest_xray -- --folds 3 --epochs 8
    python scripts/study.py recipe    --data ../shared/data/chest_xray -- --folds 3 --epochs 8

Arguments after `--` go to every run. Runs land in runs/<grid>/<name>/ and are skipped when already done,
so a killed study continues where it stopped. Metrics are mean ± sd over patient-grouped folds: ROC AUC;
sensitivity/specificity at the naive 0.5 threshold (where imbalance handling matters most) and at the
Youden threshold chosen on out-of-fold predictions; ROC AUC and specificity averaged over the nine
acquisition-shift perturbations of pneumonia_hf.shift.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from pneumonia_hf.metrics import binary_metrics

GRIDS: dict[str, dict[str, list[str]]] = {
    "imbalance": {
        "none": ["--sampler", "none", "--loss", "bce"],
        "class-weighted-bce": ["--sampler", "none", "--loss", "weighted-bce"],
        "focal": ["--sampler", "none", "--loss", "focal", "--focal-alpha", "0.25"],
        "weighted-sampling": ["--sampler", "weighted", "--loss", "bce"],
        "oversample-strong-minority-aug": ["--sampler", "oversample", "--minority-augment", "strong"],
    },
    "recipe": {
        "base-128px-medium": [],  # = imbalance/weighted-sampling: the default recipe
        "equalize": ["--equalize"],
        "strong-aug": ["--augment", "strong"],
        "equalize-strong-aug": ["--equalize", "--augment", "strong"],
        "equalize-strong-aug-ls0.1": ["--equalize", "--augment", "strong", "--label-smoothing", "0.1"],
        "96px-equalize-strong": ["--image-size", "96", "--equalize", "--augment", "strong"],
        "wide-equalize-strong": ["--equalize", "--augment", "strong", "--stem-width", "24", "--widths", "24", "48",
                                 "96", "192"],
    },
}
DESCRIPTIONS = {
    "none": "none (plain BCE, uniform sampling)",
    "class-weighted-bce": "class-weighted BCE",
    "focal": "focal loss (alpha 0.25, gamma 2)",
    "weighted-sampling": "weighted sampling (WeightedRandomSampler)",
    "oversample-strong-minority-aug": "oversampling + strong minority augmentation",
}


def fold_metrics(run: Path, threshold: float) -> list[dict]:
    """Per-fold metrics at `threshold` from a run's out-of-fold predictions."""
    rows = list(csv.DictReader(open(run / "oof_predictions.csv")))
    out = []
    for k in sorted({int(r["fold"]) for r in rows}):
        y = np.array([int(r["label"]) for r in rows if int(r["fold"]) == k])
        p = np.array([float(r["probability_pneumonia"]) for r in rows if int(r["fold"]) == k])
        out.append(binary_metrics(y, p, threshold))
    return out


def ms(vals: list[float]) -> str:
    return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}"


def table_row(name: str, run: Path) -> list[str]:
    """One Markdown row of a finished run."""
    summary = json.loads((run / "cv_metrics.json").read_text())
    at05, atj = fold_metrics(run, 0.5), fold_metrics(run, summary["threshold"])
    shifted = summary["shifted_oof"].values()
    return [DESCRIPTIONS.get(name, name), ms([m["roc_auc"] for m in atj]), ms([m["recall"] for m in at05]),
            ms([m["specificity"] for m in at05]), ms([m["ece"] for m in at05]), f"{summary['threshold']:.3f}",
            ms([m["recall"] for m in atj]), ms([m["specificity"] for m in atj]),
            f"{np.mean([m['roc_auc'] for m in shifted]):.3f}", f"{np.mean([m['specificity'] for m in shifted]):.3f}",
            f"{summary.get('wall_clock_seconds', float('nan')):.0f}"]


HEADER = ["run", "ROC AUC", "sens @0.5", "spec @0.5", "ECE @0.5", "Youden thr (OOF)", "sens @thr", "spec @thr",
          "ROC AUC under shift", "spec @thr under shift", "wall s"]


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", choices=sorted(GRIDS))
    p.add_argument("--data", default="../shared/data/chest_xray")
    p.add_argument("--out", default=None, help="default runs/<grid>")
    p.add_argument("--only", nargs="*", default=None, help="run only these names")
    a = p.parse_args(argv)
    out = Path(a.out or f"runs/{a.grid}")
    rows, commands = [], []
    for name, flags in GRIDS[a.grid].items():
        run = out / name
        # the studies ran before equalisation and the shifted threshold became defaults: their baseline says so
        cmd = [sys.executable, "train.py", "--data", a.data, "--output-dir", str(run), "--no-final-fit",
               "--no-progress", "--no-equalize", "--threshold-on", "clean", *extra, *flags]
        commands.append(f"| {name} | `python {' '.join(cmd[1:])}` |")
        if (a.only is None or name in a.only) and not (run / "cv_metrics.json").exists():
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if (run / "cv_metrics.json").exists():
            rows.append(table_row(name, run))
    table = "| " + " | ".join(HEADER) + " |\n|" + "---|" * len(HEADER) + "\n"
    table += "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n"
    table += "\n| run | command |\n|---|---|\n" + "\n".join(commands) + "\n"
    (out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
