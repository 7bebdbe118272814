"""Compare threshold rules on a finished CV run: which operating point survives acquisition shift?

    python scripts/threshold_rules.py runs/recipe/equalize-strong-aug

Uses only the run's out-of-fold predictions (clean and under the nine perturbations of pneumonia_hf.shift),
i.e. no data the fold models were trained on. Prints a Markdown table: each rule's threshold, and the
sensitivity/specificity it gives on clean out-of-fold images and (mean, worst) under shift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pneumonia_hf.metrics import binary_metrics, choose_threshold, with_shifted


def load_oof(run: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Labels, clean OOF probabilities and shifted OOF probabilities from a run's per-fold results."""
    labels = {}
    for line in (run / "folds.csv").read_text().splitlines()[1:]:
        *_, label, _fold = line.rsplit(",", 2)
        labels[len(labels)] = int(label)
    y_all = np.array([labels[i] for i in range(len(labels))])
    idx, clean, shifted = [], [], {}
    for f in sorted((run / "checkpoints").glob("fold*.done.json")):
        res = json.loads(f.read_text())
        idx += res["val_idx"]
        clean += res["val_p"]
        for name, p in res["shifted_p"].items():
            shifted.setdefault(name, []).extend(p)
    return y_all[idx], np.array(clean), {k: np.array(v) for k, v in shifted.items()}


def main() -> None:
    run = Path(sys.argv[1])
    y, p, shifted = load_oof(run)
    y_sh, p_sh = with_shifted(y, p, list(shifted.values()))
    rules = {
        "Youden, clean OOF": choose_threshold(y, p, "youden"),
        "Youden, clean + shifted OOF": choose_threshold(y_sh, p_sh, "youden"),
        "sensitivity ≥ 0.97, clean OOF": choose_threshold(y, p, "sensitivity", 0.97),
        "sensitivity ≥ 0.97, clean + shifted OOF": choose_threshold(y_sh, p_sh, "sensitivity", 0.97),
        "sensitivity ≥ 0.98, clean OOF": choose_threshold(y, p, "sensitivity", 0.98),
        "0.5 (no tuning)": 0.5,
    }
    print(f"{run}: {len(y)} out-of-fold images\n")
    print("| rule | threshold | sens clean | spec clean | sens shifted (mean / worst) | spec shifted (mean / worst) |")
    print("|---|---|---|---|---|---|")
    for name, t in rules.items():
        c = binary_metrics(y, p, t)
        ms = [binary_metrics(y, sp, t) for sp in shifted.values()]
        sens, spec = [m["recall"] for m in ms], [m["specificity"] for m in ms]
        print(f"| {name} | {t:.3f} | {c['recall']:.3f} | {c['specificity']:.3f} | {np.mean(sens):.3f} / {min(sens):.3f}"
              f" | {np.mean(spec):.3f} / {min(spec):.3f} |")


if __name__ == "__main__":
    main()
