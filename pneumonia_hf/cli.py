"""`pneumonia-hf` command line: `predict` files and folders, `evaluate` a model on a labelled source."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def _fail(msg: str, code: int = 2) -> int:
    print(f"pneumonia-hf: error: {msg}", file=sys.stderr)
    return code


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify files/folders; print a table or write CSV; exit 1 when any file failed."""
    from huggingface_hub.errors import HfHubHTTPError

    from .inference import NoBundledModelError, expand_paths, load_model, predict_files

    try:
        model = load_model(args.model)
    except NoBundledModelError as e:
        return _fail(str(e))
    except (OSError, ValueError, RuntimeError, HfHubHTTPError) as e:
        return _fail(f"cannot load model {args.model!r}: {str(e).splitlines()[0]}")
    files = expand_paths(args.paths)
    if not files:
        return _fail("no image files found in the given paths")
    results = predict_files(model, files, batch_size=args.batch_size, progress=len(files) > args.batch_size)

    failed = [r for r in results if r.error]
    for r in failed:
        print(f"error: {r.error}", file=sys.stderr)
    fields = ["path", "label", "probability_pneumonia", "threshold", "error"]
    rows = [
        {
            "path": r.path,
            "label": r.label or "",
            "probability_pneumonia": "" if r.probability_pneumonia is None else f"{r.probability_pneumonia:.6f}",
            "threshold": f"{model.threshold:.6f}",
            "error": r.error or "",
        }
        for r in results
    ]
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {len(rows)} rows to {args.csv} ({len(rows) - len(failed)} classified, {len(failed)} failed)")
    else:
        w = csv.DictWriter(sys.stdout, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return 1 if failed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Metrics JSON and plots for a model on a labelled source."""
    from .evaluation import evaluate_model

    try:
        summary = evaluate_model(args.model, args.data, split=args.split, output_dir=args.output_dir,
                                 batch_size=args.batch_size, max_samples=args.max_samples)
    except (OSError, ValueError, RuntimeError) as e:  # bad source/split, unreadable or mismatched model
        return _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    m = summary["metrics"]
    print(
        f"{summary['n']} images | threshold {m['threshold']:.3f} | acc {m['accuracy']:.4f} "
        f"sens {m['recall']:.4f} spec {m['specificity']:.4f} ROC AUC {m['roc_auc']:.4f} -> {args.output_dir}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Argument parser for the `pneumonia-hf` command."""
    p = argparse.ArgumentParser(prog="pneumonia-hf", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("predict", help="classify image files and folders (recursively)")
    pr.add_argument("paths", nargs="+", help="image files or folders")
    pr.add_argument("--model", default=None, help="local folder or Hub repo id (default: the bundled model)")
    pr.add_argument("--csv", default=None, help="write results to this CSV instead of stdout")
    pr.add_argument("--batch-size", type=int, default=32)
    pr.set_defaults(func=cmd_predict)

    ev = sub.add_parser("evaluate", help="metrics and plots of a model on a labelled data source")
    ev.add_argument("--model", default=None, help="local folder or Hub repo id (default: the bundled model)")
    ev.add_argument("--data", required=True, help="Hub dataset id, local image folder or parquet file(s)")
    ev.add_argument("--split", default="test")
    ev.add_argument("--output-dir", required=True)
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--max-samples", type=int, default=None, help="evaluate on a random (seeded) subset of N images")
    ev.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pneumonia-hf` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        return _fail("--batch-size must be at least 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
