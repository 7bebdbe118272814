"""Shared fixtures: synthetic images of any PIL mode, decompression-bomb PNGs, real X-rays, tiny models, a fake Hub."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hub_server import HubServer

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray"
TINY_CONFIG = {"widths": [8, 16, 32], "depths": [1, 1, 1], "stem_width": 8, "image_size": 64, "threshold": 0.37}


def pixels(width: int, height: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A uint8 (H, W) or (H, W, C) test picture: a diagonal gradient plus noise, so no two pixels agree by accident."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = (xx / max(width - 1, 1) * 160 + yy / max(height - 1, 1) * 60).astype(np.float64)
    noise = np.random.default_rng(seed).integers(0, 35, size=(height, width, channels))
    a = np.clip(base[..., None] + noise, 0, 255).astype(np.uint8)
    return a[..., 0] if channels == 1 else a


def make_test_image(mode: str, size: tuple[int, int] = (96, 80), seed: int = 0) -> Image.Image:
    """A PIL image in `mode` ("L", "LA", "RGB", "RGBA", "P", "CMYK", "I;16", "1", ...) of `size` (W, H)."""
    w, h = size
    if mode == "I;16":  # 12-bit values in a 16-bit container, like many DICOM exports
        a = pixels(w, h, seed=seed).astype(np.uint16) * 16
        return Image.fromarray(a)  # mode "I;16"
    rgb = Image.fromarray(pixels(w, h, 3, seed=seed), "RGB")
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    if mode in ("LA", "RGBA"):
        im = rgb.convert(mode)
        im.putalpha(Image.fromarray(np.full((h, w), 200, np.uint8)))
        return im
    return rgb.convert(mode)


def bomb_png_bytes(width: int, height: int) -> bytes:
    """A valid, few-KB 1-bit PNG of width x height black pixels (a decompression bomb when large)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    parts = [z.compress(row * 256) for _ in range(height // 256)]
    idat = b"".join([*parts, z.compress(row * (height % 256)), z.flush()])
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-default running stats, so eval-mode outputs depend on all buffers."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@pytest.fixture
def tiny_model():
    """A small, non-default PneumoniaCNN in eval mode with random weights and BatchNorm statistics."""
    from pneumonia_hf import PneumoniaCNN

    torch.manual_seed(0)
    return randomize_batchnorm(PneumoniaCNN(**TINY_CONFIG)).eval()


@pytest.fixture(scope="session")
def xray_paths() -> dict[str, Path]:
    """One real chest X-ray per class from ../shared/data (224x224 RGB JPEGs)."""
    out = {}
    for label in ("NORMAL", "PNEUMONIA"):
        files = sorted((DATA_DIR / "train" / label).glob("*.jp*g"))[:1]
        if not files:
            pytest.skip(f"no real X-rays under {DATA_DIR / 'train' / label}")
        out[label] = files[0]
    return out


@pytest.fixture(scope="module")
def hub_server():
    """A fake Hub on 127.0.0.1, fresh for each test module; `hub_server.env(home)` is a client's environment."""
    with HubServer() as server:
        yield server


def write_xray_folder(root: Path, n_per_class: int, corrupt: bool = False) -> Path:
    """An image folder root/train/{NORMAL,PNEUMONIA} of real X-rays, one per patient (names kept, so patient ids
    parse); with `corrupt`, plus one PNEUMONIA file that is not an image. Skips when ../shared/data is missing."""
    from pneumonia_hf.data import patient_id

    for label in ("NORMAL", "PNEUMONIA"):
        seen, dest = set(), root / "train" / label
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted((DATA_DIR / "train" / label).glob("*.jp*g")):
            if len(seen) == n_per_class:
                break
            if patient_id(f.name) not in seen:
                seen.add(patient_id(f.name))
                (dest / f.name).write_bytes(f.read_bytes())
        if len(seen) < n_per_class:
            pytest.skip(f"fewer than {n_per_class} {label} patients under {DATA_DIR / 'train'}")
    if corrupt:
        (root / "train" / "PNEUMONIA" / "person9999_bacteria_9999.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


@pytest.fixture(scope="module")
def datasets_cache(tmp_path_factory):
    """Point this process's `datasets` cache at a fresh folder for the module, so tests leave ~/.cache alone."""
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("datasets_cache"))
        yield
