"""How well does the out-of-distribution guard (pneumonia_hf.ood) tell chest X-rays from everything else?

    python benchmarks/ood_eval.py                                  # random-init model: layer (a) carries it
    python benchmarks/ood_eval.py --model path/or/repo-id          # the trained model (+ its `ood` stats)
    python benchmarks/ood_eval.py --print-template                 # regenerate ood._CXR_TEMPLATE_X100

Non-X-rays are generated here (no downloads): colour gradients and noise, gray noise, rendered text
"documents", blank/constant images, the sample photos that ship with scikit-image and matplotlib (in
colour, in grayscale and cropped) and scikit-image's small LFW face crops. X-rays are the real training
images under --data. Reports, per category, how many were flagged by the model-free checks (a), by the
embedding distance (b) and by either; and the false-alarm rate on X-rays. When the model has no `ood`
stats, they are fitted with `fit_ood` on --fit-fraction of the X-rays and false alarms of (b) are counted
on the rest only. Targets: >= 95 % of non-X-rays flagged, <= 1 % of X-rays flagged.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pneumonia_hf import PneumoniaCNN, load_model  # noqa: E402
from pneumonia_hf.ood import embed, fit_ood, image_checks, layout_thumbnail, ood_distance  # noqa: E402
from pneumonia_hf.preprocessing import build_eval_transform, read_image  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray" / "train"
WORDS = (
    "patient report invoice total amount date name address the of and to in is for on with results summary "
    "page table figure chapter section lorem ipsum dolor sit amet consectetur adipiscing elit"
).split()


# ---- non-X-ray generators: each yields PIL images -------------------------------------------------


def _smooth_field(rng: np.random.Generator, size: tuple[int, int], channels: int, cell: int) -> Image.Image:
    small = (rng.random((max(2, size[1] // cell), max(2, size[0] // cell), channels)) * 255).astype(np.uint8)
    return Image.fromarray(small.squeeze(-1) if channels == 1 else small).resize(size, Image.BICUBIC)


def colour_gradients(rng: np.random.Generator, n: int):
    """Linear and radial gradients between two random colours, random sizes and aspect ratios."""
    for i in range(n):
        w, h = int(rng.integers(160, 800)), int(rng.integers(160, 800))
        yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if i % 2:
            t = np.hypot(xx - rng.random(), yy - rng.random())
        else:
            a = rng.random() * 2 * np.pi
            t = xx * np.cos(a) + yy * np.sin(a)
        t = (t - t.min()) / (np.ptp(t) + 1e-9)
        yield Image.fromarray((c0 + (c1 - c0) * t[..., None]).astype(np.uint8), "RGB")


def colour_noise(rng: np.random.Generator, n: int):
    """Uniform RGB noise and smooth colour blobs."""
    for i in range(n):
        size = (int(rng.integers(128, 640)), int(rng.integers(128, 640)))
        if i % 2:
            yield Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
        else:
            yield _smooth_field(rng, size, 3, int(rng.integers(8, 64)))


def gray_noise(rng: np.random.Generator, n: int):
    """Uniform gray noise and smooth gray blobs (grayscale, so the colour check cannot help)."""
    for i in range(n):
        size = (int(rng.integers(128, 640)), int(rng.integers(128, 640)))
        if i % 2:
            yield Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8), "L")
        else:
            yield _smooth_field(rng, size, 1, int(rng.integers(8, 64)))


def documents(rng: np.random.Generator, n: int):
    """Text pages rendered with ImageDraw: plain, rotated, scanned (blur + noise), tinted, long receipts."""
    for i in range(n):
        w = int(rng.integers(400, 900))
        h = int(w * rng.uniform(1.2, 1.5)) if i % 5 else int(w * rng.uniform(2.5, 4))  # every 5th: a receipt
        bg, ink = int(rng.integers(215, 256)), int(rng.integers(0, 90))
        im = Image.new("L", (w, h), bg)
        draw = ImageDraw.Draw(im)
        fs = int(rng.integers(10, 28))
        font = ImageFont.load_default(size=fs)
        y = int(rng.integers(20, 80))
        if i % 3 == 0:
            draw.text((40, y), " ".join(rng.choice(WORDS, 3)).upper(), fill=ink, font=ImageFont.load_default(size=2 * fs))
            y += 3 * fs
        while y < h - 40:
            draw.text((int(rng.integers(30, 60)), y), " ".join(rng.choice(WORDS, int(rng.integers(3, 14)))), fill=ink, font=font)
            y += int(fs * rng.uniform(1.3, 2.2))
            if rng.random() < 0.05:  # a table or figure box
                draw.rectangle([40, y, w - 40, y + int(rng.integers(40, 160))], outline=ink, width=2)
                y += 170
        if i % 4 == 1:
            im = im.rotate(float(rng.uniform(-4, 4)), expand=True, fillcolor=int(rng.integers(0, 256)))
        elif i % 4 == 2:
            a = np.asarray(im.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32) + rng.normal(0, 6, (im.height, im.width))
            im = Image.fromarray(a.clip(0, 255).astype(np.uint8))
        elif i % 4 == 3:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) * (rng.integers(200, 256, 3) / 255.0)
            im = Image.fromarray(rgb.astype(np.uint8), "RGB")
        yield im


def blanks(rng: np.random.Generator, n: int):
    """Constant gray or colour images, constant plus faint noise, pure white and black."""
    for i in range(n):
        size = (int(rng.integers(64, 1024)), int(rng.integers(64, 1024)))
        k = i % 4
        if k == 0:
            yield Image.new("L", size, int(rng.integers(0, 256)))
        elif k == 1:
            yield Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
        elif k == 2:
            a = rng.normal(int(rng.integers(0, 256)), 2.0, (size[1], size[0])).clip(0, 255)
            yield Image.fromarray(a.astype(np.uint8), "L")
        else:
            yield Image.new("RGB", size, (255, 255, 255) if i % 8 == 3 else (0, 0, 0))


def sample_photo_files() -> list[str]:
    """Image files shipped inside scikit-image (if installed) and matplotlib."""
    roots = []
    try:
        import skimage

        roots.append(os.path.join(os.path.dirname(skimage.__file__), "data"))
    except ImportError:
        print("note: scikit-image is not installed; its sample photos are skipped", file=sys.stderr)
    import matplotlib

    roots.append(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data"))
    return sorted(f for r in roots for ext in ("png", "jpg", "gif") for f in glob.glob(os.path.join(r, f"*.{ext}")))


def photos(rng: np.random.Generator, crops: int = 3) -> tuple[list[Image.Image], list[Image.Image]]:
    """(colour photos, grayscale photos): each sample photo plus `crops` random crops; colour ones also in gray."""
    colour, gray = [], []
    for f in sample_photo_files():
        im = Image.open(f)
        im.load()
        if im.mode in ("P", "RGBA", "LA", "PA"):
            im = im.convert("RGBA").convert("RGB")
        variants = [im]
        for _ in range(crops):
            if min(im.size) < 96:
                break
            cw, ch = int(im.width * rng.uniform(0.5, 0.9)), int(im.height * rng.uniform(0.5, 0.9))
            x, y = int(rng.integers(0, im.width - cw + 1)), int(rng.integers(0, im.height - ch + 1))
            variants.append(im.crop((x, y, x + cw, y + ch)))
        a = np.asarray(im.convert("RGB"), dtype=np.int16)
        is_colour = (a.max(-1) - a.min(-1)).mean() > 8
        for v in variants:
            (colour if is_colour else gray).append(v)
            if is_colour:
                gray.append(v.convert("L"))
    return colour, gray


def faces(rng: np.random.Generator, n: int):
    """Grayscale face crops from scikit-image's LFW subset: half at 25x25, half upscaled to 200x200."""
    try:
        import skimage
    except ImportError:
        return
    a = np.load(os.path.join(os.path.dirname(skimage.__file__), "data", "lfw_subset.npy"))
    for j, i in enumerate(rng.choice(len(a), n, replace=False)):
        im = Image.fromarray((a[i] * 255).astype(np.uint8), "L")
        yield im.resize((200, 200), Image.BICUBIC) if j % 2 else im


def non_xrays(seed: int = 0) -> dict[str, list[Image.Image]]:
    """All generated non-X-ray images by category."""
    rng = np.random.default_rng(seed)
    out = {
        "colour_gradient": list(colour_gradients(rng, 60)),
        "colour_noise": list(colour_noise(rng, 40)),
        "gray_noise": list(gray_noise(rng, 40)),
        "document": list(documents(rng, 80)),
        "blank": list(blanks(rng, 40)),
    }
    out["photo_colour"], out["photo_gray"] = photos(rng)
    out["face_gray"] = list(faces(rng, 40))
    return {k: v for k, v in out.items() if v}


def xray_files(data: Path) -> list[Path]:
    """Image files under `data`, recursively, in a stable order."""
    return sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in {".jpeg", ".jpg", ".png"})


def print_template(files: list[Path], size: int = 16) -> None:
    """Mean z-scored thumbnail of every 4th X-ray, x100, as the literal in pneumonia_hf/ood.py."""
    thumbs = np.stack([layout_thumbnail(read_image(f), size) for f in files[::4]])
    m = np.round(thumbs.mean(0) * 100).astype(int)
    print(f"# mean of {len(files[::4])} thumbnails")
    print("_CXR_TEMPLATE_X100 = [\n" + "".join(f"    {row.tolist()},\n" for row in m) + "]")


# ---- evaluation --------------------------------------------------------------------------------


@torch.inference_mode()
def embeddings(model: PneumoniaCNN, images: list[Image.Image], batch_size: int = 64) -> np.ndarray:
    """(N, F) embeddings through the package's eval transform."""
    t = build_eval_transform(model)
    out = [embed(model, torch.stack([t(im) for im in images[i : i + batch_size]])) for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally save) the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or Hub repo id (default: a random-init PneumoniaCNN)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of real chest X-rays (searched recursively)")
    p.add_argument("--max-xrays", type=int, default=None, help="evaluate a seeded random sample of this many X-rays")
    p.add_argument("--fit-fraction", type=float, default=0.5, help="share of X-rays to fit embedding stats on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--print-template", action="store_true", help="print the layout template and exit")
    args = p.parse_args(argv)
    t0 = time.time()
    files = xray_files(args.data)
    if not files:
        print(f"no X-ray images under {args.data}", file=sys.stderr)
        return 2
    if args.print_template:
        print_template(files)
        return 0
    if args.max_xrays and args.max_xrays < len(files):
        idx = np.random.default_rng(args.seed).choice(len(files), args.max_xrays, replace=False)
        files = [files[i] for i in sorted(idx)]

    if args.model:
        model, model_name = load_model(args.model), args.model
    else:
        torch.manual_seed(args.seed)
        model, model_name = PneumoniaCNN().eval(), "random-init PneumoniaCNN()"
    model.eval()

    # X-rays: layer (a) on every image; embeddings for layer (b).
    xr_images = [read_image(f) for f in files]
    xr_a = [image_checks(im)[0] for im in xr_images]
    xr_emb = embeddings(model, xr_images)
    eval_idx = np.arange(len(files))
    if model.ood is not None:
        stats, stats_src = model.ood, "the model's stored `ood` stats"
    else:
        perm = np.random.default_rng(args.seed).permutation(len(files))
        n_fit = int(round(args.fit_fraction * len(files)))
        fit_idx, eval_idx = np.sort(perm[:n_fit]), np.sort(perm[n_fit:])
        stats = fit_ood(xr_emb[fit_idx], seed=args.seed)
        stats_src = f"fit_ood on {n_fit} X-rays (false alarms counted on the other {len(eval_idx)})"
    xr_b = ood_distance(stats, xr_emb) > stats["threshold"]

    print(f"model: {model_name}\nembedding stats: {stats_src}\n")
    report: dict = {"model": model_name, "embedding_stats": stats_src, "non_xray": {}, "xray": {}}
    tot = Counter()
    print(f"{'non-X-ray category':18s} {'n':>5s} {'(a) image':>10s} {'(b) embed':>10s} {'(a) or (b)':>11s}")
    reasons_seen = Counter()
    for cat, images in non_xrays(args.seed).items():
        a = [image_checks(im)[0] for im in images]
        b = ood_distance(stats, embeddings(model, images)) > stats["threshold"]
        fa, fb = np.array([bool(r) for r in a]), np.asarray(b)
        row = {"n": len(images), "a": int(fa.sum()), "b": int(fb.sum()), "any": int((fa | fb).sum())}
        report["non_xray"][cat] = row
        tot.update(row)
        reasons_seen.update(r.split(" (")[0] for rs in a for r in rs)
        print(f"{cat:18s} {row['n']:5d} {row['a']:10d} {row['b']:10d} {row['any']:11d}")
    n = tot["n"]
    print(f"{'TOTAL':18s} {n:5d} {tot['a']:10d} {tot['b']:10d} {tot['any']:11d}")
    print(f"flagged: (a) {tot['a'] / n:.1%}  (b) {tot['b'] / n:.1%}  (a) or (b) {tot['any'] / n:.1%}   [target >= 95%]")

    xa = np.array([bool(r) for r in xr_a])
    fa_a = int(xa.sum())
    fa_b, fa_any = int(xr_b[eval_idx].sum()), int((xa | xr_b)[eval_idx].sum())
    m = len(eval_idx)
    print(f"\nX-ray false alarms: (a) {fa_a}/{len(files)} = {fa_a / len(files):.2%} (all X-rays)  "
          f"(b) {fa_b}/{m} = {fa_b / m:.2%}  (a) or (b) {fa_any}/{m} = {fa_any / m:.2%}   [target <= 1%]")
    print("X-ray false-alarm reasons (a):", dict(Counter(r.split(" (")[0] for rs in xr_a for r in rs)))
    report["non_xray_total"] = dict(tot)
    report["xray"] = {"n": len(files), "a": fa_a, "n_eval": m, "b": fa_b, "any": fa_any}
    print(f"\n{time.time() - t0:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
