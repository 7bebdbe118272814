"""Training images/s on this machine: data pipeline alone, train step alone, end to end (one process).

    python benchmarks/train_throughput.py --data ../shared/data/chest_xray [--batches 40] [flags of train.py]

The three figures come from one run, so their ratios are comparable even on a noisy machine.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from pneumonia_hf.config import build_arg_parser, TrainConfig
from pneumonia_hf.data import decode_dataset, load_source, to_tensors
from pneumonia_hf.losses import build_loss
from pneumonia_hf.preprocessing import normalize
from pneumonia_hf.training import build_model, build_train_augment, make_loaders


def main() -> None:
    p = build_arg_parser()
    p.add_argument("--batches", type=int, default=40, help="batches timed per measurement")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    n_batches, repeats = a.batches, a.repeats
    del a.batches, a.repeats
    cfg = TrainConfig(**vars(a))
    torch.manual_seed(cfg.seed)

    t0 = time.perf_counter()
    ds, _ = decode_dataset(load_source(cfg.data, cfg.split), cfg.model_kwargs())
    pixels, labels = to_tensors(ds)
    print(f"load + cached decode of {len(labels)} images: {time.perf_counter() - t0:.1f} s")
    loader, _ = make_loaders(cfg, pixels, labels, np.arange(len(labels)), None)
    model = build_model(cfg)
    loss_fn = build_loss(cfg.loss, int((labels == 0).sum()), int((labels == 1).sum()))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    model.train()

    augment = build_train_augment(cfg)

    def step(x, y):
        loss = loss_fn(model(normalize(x, cfg.model_kwargs())), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def batches():
        while True:
            yield from loader

    # the step alone runs on already augmented batches; the data pipeline is loading + augmentation
    fixed = [(augment(x, y), y) for x, y in (next(iter(loader)) for _ in range(4))]
    for x, y in fixed:  # warm-up
        step(x, y)

    def timed(fn) -> float:
        best = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            n = fn()
            best = max(best, n / (time.perf_counter() - t))
        return best

    def data_only():
        it, n = batches(), 0
        for _ in range(n_batches):
            x, y = next(it)
            augment(x, y)
            n += len(y)
        return n

    def step_only():
        n = 0
        for i in range(n_batches):
            x, y = fixed[i % len(fixed)]
            step(x, y)
            n += len(y)
        return n

    def end_to_end():
        it, n = batches(), 0
        for _ in range(n_batches):
            x, y = next(it)
            step(augment(x, y), y)
            n += len(y)
        return n

    rows = [("data pipeline alone", timed(data_only)), ("train step alone", timed(step_only)),
            ("end to end", timed(end_to_end))]
    print(f"\nimage_size={cfg.image_size} batch={cfg.batch_size} augment={cfg.augment} sampler={cfg.sampler} "
          f"threads={torch.get_num_threads()} (best of {repeats} x {n_batches} batches)")
    print("| measurement | images/s |\n|---|---|")
    for name, v in rows:
        print(f"| {name} | {v:.0f} |")
    ratio = rows[2][1] / rows[1][1]
    print(f"\nend to end / train step alone = {ratio:.2f} ({'within' if ratio >= 0.8 else 'NOT within'} 20 %)")


if __name__ == "__main__":
    sys.exit(main())
