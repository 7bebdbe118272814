"""The training loop: patient-grouped CV with Accelerate, out-of-fold threshold, final fit, resumable."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .augment import ClassAugment, build_augment
from .config import TrainConfig
from .data import BalancedSampler, XrayTensorDataset, build_folds, decode_dataset, grouped_subset, load_source, to_tensors
from .losses import build_loss
from .metrics import apply_platt, binary_metrics, choose_threshold, fit_platt, summarize, with_shifted
from .model import PneumoniaCNN
from .preprocessing import normalize

logger = logging.getLogger("pneumonia_hf.training")


class TorchvisionBaseline(torch.nn.Module):
    """A torchvision classifier (random init) with one logit, for side-by-side comparisons only."""

    def __init__(self, name: str, in_channels: int):
        super().__init__()
        import torchvision

        self.net = getattr(torchvision.models, name)(weights=None, num_classes=1)
        if in_channels != 3 and hasattr(self.net, "conv1"):
            old = self.net.conv1
            self.net.conv1 = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                             bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def build_model(cfg: TrainConfig, **overrides) -> torch.nn.Module:
    """A fresh PneumoniaCNN from the config's model fields (or a torchvision baseline with --arch)."""
    if cfg.arch != "pneumonia-cnn":
        return TorchvisionBaseline(cfg.arch, cfg.in_channels)
    return PneumoniaCNN(**{**cfg.model_kwargs(), **overrides})


def make_loaders(cfg: TrainConfig, pixels: torch.Tensor, labels: torch.Tensor, train_idx: np.ndarray,
                 val_idx: np.ndarray | None, num_processes: int = 1) -> tuple[DataLoader, DataLoader | None]:
    """Training loader (augmented, class-balanced sampler) and plain validation loader.

    --batch-size is the global batch: each of N processes takes batch_size / N consecutive samples of the
    same seeded stream, so 1 and N processes see the same data in the same optimizer steps.
    """
    if cfg.batch_size % num_processes:
        raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the {num_processes} processes")
    bs = cfg.batch_size // num_processes
    ytr = labels[train_idx]
    train_ds = XrayTensorDataset(pixels[train_idx], ytr)
    sampler = BalancedSampler(ytr, cfg.sampler, cfg.seed)
    train_loader = DataLoader(train_ds, batch_size=bs, sampler=sampler, num_workers=cfg.num_workers,
                              drop_last=True, persistent_workers=cfg.num_workers > 0)
    val_loader = None
    if val_idx is not None and len(val_idx):
        val_loader = DataLoader(XrayTensorDataset(pixels[val_idx], labels[val_idx]), batch_size=bs * 2)
    return train_loader, val_loader


def lr_lambda(total_steps: int, warmup_steps: int):
    """Linear warm-up, then cosine decay to 0."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


def build_train_augment(cfg: TrainConfig) -> ClassAugment:
    """Per-class batch augmentation: --minority-augment for NORMAL (class 0), --augment for PNEUMONIA."""
    aug = build_augment(cfg.augment, cfg.image_size)
    minority = build_augment(cfg.minority_augment, cfg.image_size) if cfg.minority_augment else aug
    return ClassAugment({0: minority, 1: aug})


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, accelerator, cfg: TrainConfig, desc: str,
                    augment: ClassAugment | None = None) -> float:
    """One pass over the training loader; returns the mean loss over all processes."""
    from tqdm.auto import tqdm

    augment = augment or build_train_augment(cfg)
    model.train()
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    bar = tqdm(loader, desc=desc, leave=False, disable=not (cfg.progress and accelerator.is_main_process))
    for x, y in bar:
        x = normalize(augment(x, y), cfg.model_kwargs())  # uint8 -> float (B, C, S, S)
        with accelerator.autocast():
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        total += loss.detach() * len(y)
        count += len(y)
        if not bar.disable:  # .item() syncs the device: only when someone watches
            bar.set_postfix(loss=f"{loss.item():.4f}")
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    return float(total / count.clamp(min=1))


@torch.no_grad()
def predict_loader(model, loader, accelerator, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """P(pneumonia) and labels for every sample of a prepared loader, each counted once across processes."""
    model.eval()
    probs, ys = [], []
    for x, y in loader:
        with accelerator.autocast():
            logits = model(normalize(x, cfg.model_kwargs())).float()
        p, y = accelerator.gather_for_metrics((torch.sigmoid(logits), y))
        probs.append(p.cpu())
        ys.append(y.cpu())
    return torch.cat(probs).numpy(), torch.cat(ys).numpy()


def _bce(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _checkpoint(accelerator, ckpt_dir: Path, name: str, epoch: int, progress: dict) -> None:
    """Crash-safe end-of-epoch state: save_state into a fresh folder, then point the progress file at it
    (atomic rename), then drop older folders. A kill at any moment leaves a consistent checkpoint."""
    import shutil

    state_dir = ckpt_dir / name / f"epoch{epoch:03d}"
    accelerator.save_state(str(state_dir))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = ckpt_dir / f"{name}.progress.json.tmp"
        tmp.write_text(json.dumps({"epoch": epoch, "state_dir": str(state_dir), **progress}))
        os.replace(tmp, ckpt_dir / f"{name}.progress.json")
        for old in (ckpt_dir / name).glob("epoch*"):
            if old != state_dir:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def fit(cfg: TrainConfig, accelerator, pixels, labels, train_idx, val_idx, ckpt_dir: Path, name: str, seed_offset: int,
        groups: np.ndarray | None = None):
    """Train one model on train_idx; score val_idx each epoch (monitoring only). Resumable per epoch.

    Early stopping, when on, watches an inner patient-grouped split of train_idx, never val_idx.
    Returns (unwrapped model, history, val probabilities or None).
    """
    from accelerate.utils import set_seed

    inner_idx = None
    if cfg.early_stopping_patience > 0:
        mask = grouped_subset(labels[train_idx].numpy(), groups[train_idx], cfg.inner_val_fraction, cfg.seed + seed_offset)
        train_idx, inner_idx = train_idx[~mask], train_idx[mask]
    set_seed(cfg.seed + seed_offset)
    model = build_model(cfg)
    n_proc = accelerator.num_processes
    train_loader, val_loader = make_loaders(cfg, pixels, labels, train_idx, val_idx, n_proc)
    inner_loader = make_loaders(cfg, pixels, labels, train_idx[:0], inner_idx, n_proc)[1] if inner_idx is not None else None
    ytr = labels[train_idx]
    loss_fn = build_loss(cfg.loss, int((ytr == 0).sum()), int((ytr == 1).sum()), cfg.focal_alpha, cfg.focal_gamma,
                         cfg.label_smoothing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Counted in per-process batches: the prepared scheduler steps num_processes times per optimizer step.
    per_epoch = len(train_loader)
    if per_epoch < n_proc:  # drop_last: fewer images than one global batch would train nothing
        raise ValueError(f"{len(train_idx)} training images do not fill one batch of {cfg.batch_size}: "
                         "lower --batch-size or use more data")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.epochs * per_epoch, max(1, int(cfg.warmup_epochs * per_epoch))))
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    val_loader = accelerator.prepare(val_loader) if val_loader is not None else None
    inner_loader = accelerator.prepare(inner_loader) if inner_loader is not None else None
    loss_fn = loss_fn.to(accelerator.device)

    progress_file = ckpt_dir / f"{name}.progress.json"
    history, start, best, bad_epochs = [], 0, -math.inf, 0
    if cfg.resume and progress_file.exists():
        prog = json.loads(progress_file.read_text())
        accelerator.load_state(prog["state_dir"])
        history, start, best, bad_epochs = prog["history"], prog["epoch"] + 1, prog["best"], prog["bad_epochs"]
        accelerator.print(f"[{name}] resumed after epoch {start}")

    val_p = None
    for epoch in range(start, cfg.epochs):
        if bad_epochs >= cfg.early_stopping_patience > 0:
            break
        # each epoch's randomness is fixed (exact resume); ranks differ so they draw different augmentations
        set_seed(cfg.seed + seed_offset + 1009 * (epoch + 1) + 100_003 * accelerator.process_index)
        train_loader.set_epoch(epoch)
        t0 = time.time()
        rec = {"epoch": epoch, "train_loss": train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler,
                                                               accelerator, cfg, f"{name} epoch {epoch + 1}/{cfg.epochs}")}
        if val_loader is not None:
            val_p, val_y = predict_loader(model, val_loader, accelerator, cfg)
            if not np.array_equal(val_y, labels[val_idx].numpy()):
                raise RuntimeError(f"gathered {len(val_y)} validation labels, expected the {len(val_idx)} of the fold in order")
            rec.update(val_loss=_bce(val_y, val_p), val_roc_auc=binary_metrics(val_y, val_p)["roc_auc"])
        if inner_loader is not None:
            ip, iy = predict_loader(model, inner_loader, accelerator, cfg)
            m = binary_metrics(iy, ip, 0.5)
            score = -_bce(iy, ip) if cfg.monitor == "loss" else m[cfg.monitor]
            rec["inner_" + cfg.monitor] = score
            if score > best:
                best, bad_epochs = score, 0
                accelerator.save_model(model, str(ckpt_dir / f"{name}.best"))
            else:
                bad_epochs += 1
        rec["seconds"] = round(time.time() - t0, 2)
        history.append(rec)
        accelerator.print(f"[{name}] epoch {epoch + 1}/{cfg.epochs} " + " ".join(
            f"{k}={v:.4f}" for k, v in rec.items() if k not in ("epoch",)))
        _checkpoint(accelerator, ckpt_dir, name, epoch, {"history": history, "best": best, "bad_epochs": bad_epochs})

    unwrapped = accelerator.unwrap_model(model)
    if inner_loader is not None and (ckpt_dir / f"{name}.best").exists():
        from safetensors.torch import load_model

        load_model(unwrapped, str(ckpt_dir / f"{name}.best" / "model.safetensors"))
        if val_loader is not None:
            val_p, _ = predict_loader(model, val_loader, accelerator, cfg)
    if val_loader is not None and val_p is None:  # resumed after the last epoch: score again
        val_p, _ = predict_loader(model, val_loader, accelerator, cfg)
    return unwrapped, history, val_p


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def run(cfg: TrainConfig) -> dict:
    """The whole recipe: load + cache data, K patient-grouped folds, OOF threshold, final fit, outputs."""
    from accelerate import Accelerator

    from .plots import plot_evaluation, plot_learning_curves

    cfg.validate()
    # `accelerate launch --multi_gpu` on a machine without GPUs: Accelerate only falls back to gloo on the CPU
    # (DistributedType.MULTI_CPU) when told cpu=True, else each process would train alone.
    cpu_distributed = "LOCAL_RANK" in os.environ and not torch.accelerator.is_available()
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cpu_distributed)
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    if cfg.resume and (out / "train_config.json").exists():
        before = {k: v for k, v in json.loads((out / "train_config.json").read_text()).items()
                  if k not in ("resume", "progress", "push_to_hub", "num_workers")}
        now = {k: v for k, v in dataclasses.asdict(cfg).items() if k in before}
        changed = sorted(k for k in before if before[k] != now.get(k))
        if changed:
            raise ValueError(f"--resume with settings that differ from the run in {out}: {', '.join(changed)}")
    if accelerator.is_main_process:
        if not cfg.resume and ckpt_dir.exists():  # a fresh run must never pick up an older run's fold results
            import shutil

            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (out / "plots").mkdir(exist_ok=True)
        cfg.save(out / "train_config.json")
    accelerator.wait_for_everyone()
    t_start = time.time()

    with accelerator.main_process_first():  # the main process fills the datasets cache, the others reuse it
        ds = load_source(cfg.data, cfg.split)
        if cfg.max_samples and cfg.max_samples < len(ds):
            keep = grouped_subset(ds["label"], ds["patient"], cfg.max_samples / len(ds), cfg.seed)
            ds = ds.select(np.nonzero(keep)[0])
        ds, skipped = decode_dataset(ds, cfg.model_kwargs())
    pixels, labels = to_tensors(ds)
    paths, groups = np.array(ds["path"]), np.array(ds["patient"])
    fold = build_folds(labels.numpy(), groups, cfg.folds, cfg.seed)
    if accelerator.is_main_process:
        _write_csv(out / "folds.csv", [{"path": p, "patient": g, "label": int(y), "fold": int(k)}
                                       for p, g, y, k in zip(paths, groups, labels.tolist(), fold)])
    accelerator.print(f"{len(labels)} images, {len(set(groups))} patients, {int(labels.sum())} pneumonia "
                      f"({labels.float().mean():.1%}); {len(skipped)} unreadable skipped; {accelerator.num_processes} "
                      f"process(es) on {accelerator.device} ({accelerator.distributed_type})")

    folds_to_run = cfg.only_folds or list(range(cfg.folds))
    histories, oof, shifted_oof, fold_results = {}, np.full(len(labels), np.nan), {}, []
    for k in folds_to_run:
        done_file = ckpt_dir / f"fold{k}.done.json"
        if cfg.resume and done_file.exists():
            res = json.loads(done_file.read_text())
            accelerator.print(f"[fold{k}] already complete, loaded from {done_file}")
        else:
            tr, va = np.nonzero(fold != k)[0], np.nonzero(fold == k)[0]
            fold_model, hist, val_p = fit(cfg, accelerator, pixels, labels, tr, va, ckpt_dir, f"fold{k}", 7919 * (k + 1),
                                          groups)
            res = {"history": hist, "val_idx": va.tolist(), "val_p": val_p.tolist(),
                   "shifted_p": _shifted_predictions(fold_model, pixels[va], cfg),
                   "ood": _ood_transfer(fold_model, pixels[tr], pixels[va], cfg)}
            if accelerator.is_main_process:
                done_file.with_suffix(".tmp").write_text(json.dumps(res))
                os.replace(done_file.with_suffix(".tmp"), done_file)
            accelerator.free_memory()
        va, vp = np.array(res["val_idx"]), np.array(res["val_p"])
        assert len(vp) == len(va), "every validation image must be scored exactly once"
        oof[va] = vp
        for name, sp in res["shifted_p"].items():
            shifted_oof.setdefault(name, np.full(len(labels), np.nan))[va] = sp
        histories[f"fold{k}"] = res["history"]
        fold_results.append(res)

    scored = ~np.isnan(oof)
    y_all = labels.numpy()
    platt = None
    if cfg.calibrate and scored.any():
        # Weighted sampling and focal loss skew probabilities; one (a, b) fitted on all out-of-fold predictions
        # maps them back to frequencies. Monotone: ROC AUC and the sens/spec trade-off are unchanged.
        platt = fit_platt(y_all[scored], oof[scored])
        oof[scored] = apply_platt(oof[scored], *platt)
        for sp in shifted_oof.values():
            sp[scored] = apply_platt(sp[scored], *platt)
    y_oof, p_oof = y_all[scored], oof[scored]

    def pick_threshold(mask: np.ndarray) -> float:
        shifts = [sp[mask] for sp in shifted_oof.values()] if cfg.threshold_on == "shifted" else []
        y, p = with_shifted(y_all[mask], oof[mask], shifts)  # shifted: a threshold that holds across acquisition shifts
        return choose_threshold(y, p, cfg.threshold_rule, cfg.target_sensitivity)

    threshold = pick_threshold(scored)  # the shipped operating point: all out-of-fold predictions
    # Each fold is scored at a threshold chosen on the *other* folds' predictions (nested), so no fold's
    # figures come from an operating point tuned on that fold.
    per_fold = []
    for k in folds_to_run:
        m, others = (fold == k) & scored, (fold != k) & scored
        per_fold.append({"fold": k, **binary_metrics(y_all[m], oof[m], pick_threshold(others) if others.any() else threshold)})
    summary = {
        "n_images": int(len(labels)), "n_patients": int(len(set(groups))), "skipped_images": len(skipped),
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "threshold_rule": f"{cfg.threshold_rule} on {cfg.threshold_on} out-of-fold predictions", "threshold": threshold,
        "platt_scaling": None if platt is None else {"a": platt[0], "b": platt[1]},
        "per_fold": per_fold, "mean_std": summarize(per_fold) if len(per_fold) > 1 else None,
        "pooled_oof": binary_metrics(y_oof, p_oof, threshold),
        # the same out-of-fold images under acquisition shifts, at the same threshold (see pneumonia_hf.shift)
        "shifted_oof": {n: binary_metrics(y_oof, sp[scored], threshold) for n, sp in shifted_oof.items()},
        "num_processes": accelerator.num_processes,
        # OOD guard on held-out folds: false alarms on new (in-distribution) X-rays at the training-fitted threshold
        "ood_heldout": [r["ood"] for r in fold_results if r.get("ood")],
    }
    model_dir = None
    if cfg.final_fit:
        all_idx = np.arange(len(labels))
        final, hist, _ = fit(cfg, accelerator, pixels, labels, all_idx, None, ckpt_dir, "final", 0, groups)
        histories["final (all data)"] = hist
        if platt is not None:  # logit' = a * logit + b, folded into the head: the model itself is calibrated
            with torch.no_grad():
                final.head.weight.mul_(platt[0])
                final.head.bias.mul_(platt[0]).add_(platt[1])
        final.threshold = threshold
        final.ood = _fit_ood(final, pixels, cfg)
        ratios = [r["ood"]["ratio"] for r in fold_results if r.get("ood")]
        if final.ood is not None and ratios:
            # Images the model trained on sit closer to the embedding mean than new X-rays do; CV measured by how
            # much (distance quantile of held-out folds / the threshold fitted on training images), so widen it.
            final.ood["threshold_from_training_images"] = final.ood["threshold"]
            final.ood["cv_widening"] = round(float(np.mean(ratios)), 4)
            final.ood["threshold"] = round(final.ood["threshold"] * max(1.0, float(np.mean(ratios))), 6)
        model_dir = out / "model"
        if accelerator.is_main_process:
            from .card import model_card

            final.save_pretrained(model_dir, config={**cfg.model_kwargs(), "labels": final.labels,
                                                     "threshold": threshold, "ood": final.ood})
            model_card(cfg, summary).save(model_dir / "README.md")
    summary["wall_clock_seconds"] = round(time.time() - t_start, 1)

    if accelerator.is_main_process:
        (out / "cv_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        _write_csv(out / "oof_predictions.csv", [
            {"path": paths[i], "patient": groups[i], "label": int(labels[i]), "fold": int(fold[i]),
             "probability_pneumonia": f"{oof[i]:.6f}", "prediction": int(oof[i] >= threshold)}
            for i in np.nonzero(scored)[0]])
        plot_learning_curves(histories, out / "plots" / "learning_curves.png")
        plot_evaluation(y_oof, p_oof, threshold, out / "plots", title="(out-of-fold)")
        ms = summary["pooled_oof"]
        if summary["shifted_oof"]:
            sh = summary["shifted_oof"].values()
            accelerator.print("under acquisition shift (mean of {} perturbations): ROC AUC {:.4f} sens {:.4f} spec {:.4f}"
                              .format(len(sh), *(np.mean([m[k] for m in sh]) for k in ("roc_auc", "recall", "specificity"))))
        accelerator.print(
            f"CV ({len(folds_to_run)} folds, pooled OOF at threshold {threshold:.3f}): acc {ms['accuracy']:.4f} "
            f"sens {ms['recall']:.4f} spec {ms['specificity']:.4f} ROC AUC {ms['roc_auc']:.4f} "
            f"| {summary['wall_clock_seconds']:.0f} s -> {out}")
        if cfg.push_to_hub and model_dir is not None:
            from huggingface_hub import HfApi

            HfApi().create_repo(cfg.push_to_hub, exist_ok=True)
            HfApi().upload_folder(repo_id=cfg.push_to_hub, folder_path=str(model_dir),
                                  commit_message="Upload pneumonia-hf model trained with train.py")
            accelerator.print(f"pushed {model_dir} to {cfg.push_to_hub}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


@torch.no_grad()
def _shifted_predictions(model: PneumoniaCNN, pixels: torch.Tensor, cfg: TrainConfig) -> dict[str, list[float]]:
    """P(pneumonia) of a validation fold under each acquisition-shift perturbation (main-process, unsharded)."""
    from .evaluation import predict_pixels
    from .shift import PERTURBATIONS, perturb

    device = next(model.parameters()).device
    return {name: predict_pixels(model, perturb(pixels.to(device), name), progress=False, config=cfg.model_kwargs()).tolist()
            for name in PERTURBATIONS}


@torch.no_grad()
def _embeddings(model: PneumoniaCNN, pixels: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """(N, F) pooled embeddings of cached uint8 images."""
    from .evaluation import map_batches
    from .ood import embed

    return map_batches(lambda x: embed(model, x), pixels, cfg.model_kwargs(), next(model.parameters()).device, 256)


def _fit_ood(model: PneumoniaCNN, pixels: torch.Tensor, cfg: TrainConfig) -> dict | None:
    """Embedding statistics of the training images for the Space's out-of-distribution guard."""
    if not isinstance(model, PneumoniaCNN):
        return None
    from .ood import fit_ood

    return fit_ood(_embeddings(model, pixels, cfg))


def _ood_transfer(model: PneumoniaCNN, train_pixels: torch.Tensor, val_pixels: torch.Tensor, cfg: TrainConfig) -> dict | None:
    """Fit the OOD stats on a fold model's training images and measure them on its held-out images."""
    from .ood import ood_distance

    stats = _fit_ood(model, train_pixels, cfg)
    if stats is None:
        return None
    d = ood_distance(stats, _embeddings(model, val_pixels, cfg))
    q = float(np.quantile(d, stats["quantile"]))
    return {"threshold": stats["threshold"], "heldout_quantile": q, "ratio": q / stats["threshold"],
            "false_alarm_rate": float(np.mean(d > stats["threshold"])), "n_heldout": int(len(d))}
