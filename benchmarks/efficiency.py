"""CPU inference efficiency of the shipped model next to common baselines, in one process.

    python benchmarks/efficiency.py [--model DIR_OR_REPO] [--batch-size 32] [--repeats 5] [--threads N]

Same batch size and thread count for every model; random weights are fine for speed. Prints a Markdown
table with parameters, MACs per image, images/s and the ratios to torchvision ResNet-18.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torchvision
from torch.utils.flop_counter import FlopCounterMode


class SeedVGG(nn.Module):
    """The seed project's VGG-style CNN: 3 x [conv-bn-relu x2, maxpool] at 32-64/128-256/512-512, GAP, 1 logit."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for a, b in ((32, 64), (128, 256), (512, 512)):
            for c in (a, b):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(512, 1)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def macs_per_image(model: nn.Module, shape: tuple[int, ...]) -> float:
    """Multiply-accumulates for one image (FLOPs / 2 from torch's flop counter)."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, *shape))
    return fc.get_total_flops() / 2


@torch.inference_mode()
def images_per_second(model: nn.Module, shape: tuple[int, ...], batch: int, repeats: int) -> float:
    """Best-of-`repeats` throughput on one random batch."""
    x = torch.randn(batch, *shape)
    model(x)  # warm-up
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        model(x)
        best = max(best, batch / (time.perf_counter() - t))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="pneumonia-hf model folder or repo id (default: bundled)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    from pneumonia_hf import load_model

    ours = load_model(a.model)
    s = ours.image_size
    rgb = (3, 224, 224)
    models = {
        f"pneumonia-hf (shipped, {s} px, {ours.in_channels} ch)": (ours, (ours.in_channels, s, s)),
        "torchvision ResNet-18 (224 px RGB)": (torchvision.models.resnet18(num_classes=1), rgb),
        "DenseNet-121 (torchxrayvision's backbone, 224 px)": (torchvision.models.densenet121(num_classes=1), rgb),
        "MobileNet-V3-small (224 px)": (torchvision.models.mobilenet_v3_small(num_classes=1), rgb),
        "seed VGG-style CNN (224 px RGB)": (SeedVGG(), rgb),
    }
    rows = []
    for name, (m, shape) in models.items():
        m.eval()
        rows.append((name, sum(q.numel() for q in m.parameters()), macs_per_image(m, shape),
                     images_per_second(m, shape, a.batch_size, a.repeats)))
        print(f"measured {name}", flush=True)
    ref = next(r for r in rows if "ResNet-18" in r[0])
    print(f"\nCPU inference, batch {a.batch_size}, {a.threads} threads, best of {a.repeats}, torch {torch.__version__}\n")
    print("| model | params | MACs/img | images/s | params vs ResNet-18 | MACs vs ResNet-18 | speed vs ResNet-18 |")
    print("|---|---|---|---|---|---|---|")
    for name, n, macs, ips in rows:
        print(f"| {name} | {n / 1e6:.2f} M | {macs / 1e9:.3f} G | {ips:.0f} | {n / ref[1]:.3f}x | "
              f"{macs / ref[2]:.3f}x | {ips / ref[3]:.1f}x |")


if __name__ == "__main__":
    main()
