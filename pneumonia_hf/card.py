"""Model cards: Hub metadata (model-index with the CV metrics) plus a Markdown body from a template."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .config import TrainConfig
from .metrics import METRIC_NAMES

DEFAULT_TEMPLATE = """---
{{ card_data }}
---

# pneumonia-hf: {{ model_name }}

A {{ n_params }}-parameter CNN that labels a pediatric chest X-ray NORMAL or PNEUMONIA.
**Research model, not a medical device.**

Trained with `pneumonia-hf` `train.py` on {{ n_images }} images ({{ n_patients }} patients) of the Kermany et al.
training split. Metrics below are {{ folds }}-fold **patient-grouped** cross-validation (out-of-fold predictions,
mean ± sd over folds, each fold at the threshold chosen on the other folds) and pooled at the stored threshold
{{ threshold }} ({{ threshold_rule }}).

{{ cv_table }}

Training config: see `train_config` in this card's source run; load with
`PneumoniaCNN.from_pretrained(...)`.
"""


def cv_table(summary: dict) -> str:
    """Markdown table of the CV metrics (mean ± sd over folds, or pooled when only one fold ran)."""
    ms = summary.get("mean_std")
    head = "| metric | " + ("mean ± sd over folds | " if ms else "") + "pooled out-of-fold |\n|---|" + ("---|" if ms else "") + "---|\n"
    rows = []
    for k in METRIC_NAMES:
        pooled = summary["pooled_oof"][k]
        cells = [k] + ([f"{ms[k]['mean']:.4f} ± {ms[k]['std']:.4f}"] if ms else []) + [f"{pooled:.4f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(rows)


def shift_table(summary: dict) -> str:
    """Markdown table of the out-of-fold metrics under each acquisition-shift perturbation."""
    sh = summary.get("shifted_oof") or {}
    if not sh:
        return ""
    clean = summary["pooled_oof"]
    rows = [f"| none (clean) | {clean['roc_auc']:.4f} | {clean['recall']:.4f} | {clean['specificity']:.4f} |"]
    rows += [f"| {name} | {m['roc_auc']:.4f} | {m['recall']:.4f} | {m['specificity']:.4f} |" for name, m in sh.items()]
    return ("Out-of-fold images under acquisition shift, at the stored threshold:\n\n"
            "| perturbation | ROC AUC | sensitivity | specificity |\n|---|---|---|---|\n" + "\n".join(rows))


def card_data(summary: dict, model_name: str = "pneumonia-hf") -> ModelCardData:
    """Hub metadata with a model-index of the cross-validation results."""
    pooled = summary["pooled_oof"]
    results = [
        EvalResult(task_type="image-classification", dataset_type="chest-xray-pneumonia",
                   dataset_name=f"Kermany chest X-ray, train split, {len(summary['per_fold'])}-fold patient-grouped CV",
                   dataset_split="train (out-of-fold)", metric_type=k, metric_name=k, metric_value=round(pooled[k], 4))
        for k in ("accuracy", "recall", "specificity", "precision", "f1", "roc_auc")
    ]
    return ModelCardData(model_name=model_name, library_name="pneumonia-hf", license="cc-by-4.0",
                         pipeline_tag="image-classification", tags=["chest-x-ray", "pneumonia", "medical-imaging"],
                         datasets=["hf-vision/chest-xray-pneumonia"], metrics=["accuracy", "recall", "roc_auc"],
                         eval_results=results)


def model_card(cfg: TrainConfig, summary: dict, template_path: str | Path | None = None, **extra) -> ModelCard:
    """Render a model card for a finished run (template: a Jinja Markdown file; default: a short built-in one)."""
    from .training import build_model

    n_params = sum(p.numel() for p in build_model(cfg).parameters())
    kwargs = dict(model_name="pneumonia-hf", n_params=f"{n_params:,}", n_images=summary["n_images"],
                  n_patients=summary["n_patients"], folds=cfg.folds,
                  threshold=f"{summary['threshold']:.4f}", threshold_rule=summary["threshold_rule"],
                  cv_table=cv_table(summary), shift_table=shift_table(summary), image_size=cfg.image_size,
                  repo_id=cfg.push_to_hub or "pneumonia-hf/pneumonia-cnn", **extra)
    data = card_data(summary)
    if template_path:
        return ModelCard.from_template(data, template_path=str(template_path), **kwargs)
    return ModelCard.from_template(data, template_str=DEFAULT_TEMPLATE, **kwargs)


def main(argv: list[str] | None = None) -> None:
    """Re-render a run's model card from a template: `python -m pneumonia_hf.card --run DIR --template model_card.md`."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--run", required=True, help="a train.py output directory")
    p.add_argument("--template", default=None)
    p.add_argument("--out", default=None, help="default: RUN/model/README.md")
    p.add_argument("--extra", action="append", default=[], help="KEY=FILE: insert FILE's text as {{ KEY }}")
    a = p.parse_args(argv)
    run = Path(a.run)
    cfg = TrainConfig.load(run / "train_config.json")
    summary = json.loads((run / "cv_metrics.json").read_text())
    extra = {k: Path(v).read_text() for k, v in (e.split("=", 1) for e in a.extra)}
    card = model_card(cfg, summary, a.template, **extra)
    card.save(a.out or run / "model" / "README.md")


if __name__ == "__main__":
    main()
