"""The one preprocessing path: training, evaluation, the CLI and the Space all call these functions.

    read_image(file)             -> PIL image in its own mode (JPEG/PNG/... or DICOM, EXIF applied, checked)
    load_image(file)             -> PIL "L" image   (= to_grayscale . read_image; any mode/bit depth)
    prepare_image(img, config)   -> uint8 (C, S, S) (squashed resize, like the 224x224 training copies)
    normalize(x, config)         -> float (..., C, S, S)
    build_eval_transform(config) =  normalize . prepare_image . load_image

Training caches the output of `prepare_image` once (datasets.map) and augments the uint8 tensors,
so train-time validation and serving share every step after decoding.
"""

from __future__ import annotations

import inspect
import io
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError

from .model import PneumoniaCNN

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image, np.ndarray]

# Images above this many pixels are refused (a 16k x 16k upload is a decompression bomb, not an X-ray).
MAX_PIXELS = 64_000_000
DICOM_SUFFIXES = (".dcm", ".dicom")
PREPROCESS_KEYS = ("image_size", "in_channels", "mean", "std", "equalize")
# A config dict that leaves a field out means the model's own default: read them from its signature.
_MODEL_DEFAULTS = {k: p.default for k, p in inspect.signature(PneumoniaCNN.__init__).parameters.items()}


class ImageLoadError(ValueError):
    """An input that cannot be read as an image; the message is one line meant for the user."""


def preprocess_config(config: Any) -> dict:
    """The preprocessing fields of a model, its config dict, or a config.json path."""
    if isinstance(config, (str, os.PathLike)):
        import json

        config = json.loads(Path(config).read_text())
    if isinstance(config, torch.nn.Module):
        config = {k: getattr(config, k) for k in PREPROCESS_KEYS}
    if not isinstance(config, Mapping):
        raise TypeError(f"expected a model, a config dict or a config.json path, got {type(config).__name__}")
    return {k: config.get(k, _MODEL_DEFAULTS[k]) for k in PREPROCESS_KEYS}


def _is_dicom(head: bytes, name: str) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble; bare datasets only have the suffix."""
    return head[128:132] == b"DICM" or Path(name).suffix.lower() in DICOM_SUFFIXES


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    """Min-max scale any numeric array to 0..255 uint8 (a constant array becomes all zeros)."""
    a = np.asarray(a, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return np.round(a).astype(np.uint8)


def _read_dicom(fp: Path | BinaryIO, name: str) -> Image.Image:
    """DICOM -> PIL: modality LUT, then VOI LUT/window, scaled to 8-bit "L" (MONOCHROME1 inverted); colour stays RGB."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise ImageLoadError(f"{name}: reading DICOM files needs pydicom (pip install pydicom)") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every odd tag; the image is what matters
            ds = pydicom.dcmread(fp, force=True)
            if "PixelData" not in ds:
                raise ImageLoadError(f"{name}: DICOM file holds no image (no PixelData)")
            rows, cols = int(ds.Rows), int(ds.Columns)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            if rows * cols * frames > MAX_PIXELS:
                raise ImageLoadError(
                    f"{name}: {cols}x{rows} pixels is over the {MAX_PIXELS:,}-pixel limit (decompression bomb?)"
                )
            arr = ds.pixel_array
            photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
            if frames > 1:
                arr = arr[0]  # (frames, H, W[, 3]) -> first frame
            if photometric in ("MONOCHROME1", "MONOCHROME2") and arr.ndim == 2:
                arr = apply_voi_lut(apply_modality_lut(arr, ds), ds, index=0)
    except ImageLoadError:
        raise
    except Exception as e:  # pydicom raises many types (InvalidDicomError, ValueError, NotImplementedError, ...)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageLoadError(f"{name}: not a readable DICOM image ({msg})") from None
    if photometric in ("MONOCHROME1", "MONOCHROME2") and arr.ndim == 2:
        a = _scale_to_uint8(arr)
        if photometric == "MONOCHROME1":  # MONOCHROME1: low values are white; X-ray bone must come out bright
            a = 255 - a
        return Image.fromarray(a, mode="L")
    if arr.ndim == 3 and arr.shape[-1] == 3:  # RGB / YBR (pydicom converts YBR to RGB)
        return Image.fromarray(arr if arr.dtype == np.uint8 else _scale_to_uint8(arr), mode="RGB")
    raise ImageLoadError(f"{name}: unsupported DICOM image ({photometric}, array shape {tuple(arr.shape)})")


def _open(source: ImageSource) -> Image.Image:
    """Open any supported source as a fully decoded PIL image, refusing bombs and truncated files."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return Image.fromarray(source)
    name = "image"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = path.name
        if not path.is_file():
            raise ImageLoadError(f"{name}: no such file")
        if path.stat().st_size == 0:
            raise ImageLoadError(f"{name}: empty file (0 bytes)")
        with open(path, "rb") as f:
            head = f.read(132)
        if _is_dicom(head, name):
            return _read_dicom(path, name)
        source = path
    elif isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise ImageLoadError("empty file (0 bytes)")
        source = io.BytesIO(source)
    if not isinstance(source, Path):  # a binary stream (bytes were wrapped above)
        name = Path(str(getattr(source, "name", name))).name or name
        pos = source.tell()
        head = source.read(132)
        source.seek(pos)
        if not head:
            raise ImageLoadError(f"{name}: empty file (0 bytes)")
        if _is_dicom(head, name):
            return _read_dicom(source, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(source)
            if im.width * im.height > MAX_PIXELS:
                raise ImageLoadError(
                    f"{name}: {im.width}x{im.height} pixels is over the {MAX_PIXELS:,}-pixel limit (decompression bomb?)"
                )
            im.load()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(f"{name}: refused as a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image file PIL can read (expected JPEG or PNG)") from None
    except Exception as e:  # PIL's decoders also raise EOFError, struct.error, IndexError, ... on broken files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageLoadError(f"{name}: corrupt or truncated image ({msg})") from None
    return im


def to_grayscale(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit "L": 16-bit/float are min-max scaled, alpha is composited on black."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(im)), mode="L")
    if im.mode == "L":
        return im
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(bg, rgba).convert("L")
    if im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "P", "1"):
        im = im.convert("RGB")
    return im.convert("L")


def read_image(source: ImageSource) -> Image.Image:
    """Read a file (JPEG, PNG, ... or DICOM), bytes, array or PIL image, decoded and checked, in its own mode.

    The out-of-distribution checks look at this (colour, size); the model sees `load_image`'s grayscale.
    """
    im = _open(source)
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block must not make a readable image unusable
        pass
    if im.width < 8 or im.height < 8:
        name = Path(source).name if isinstance(source, (str, os.PathLike)) else "image"
        raise ImageLoadError(f"{name}: {im.width}x{im.height} pixels is too small; at least 8x8 is needed")
    return im


def load_image(source: ImageSource) -> Image.Image:
    """Read a file (JPEG, PNG, ... or DICOM), bytes, array or PIL image as an 8-bit grayscale PIL image."""
    return to_grayscale(read_image(source))


def prepare_image(image: Image.Image, config: Any) -> torch.Tensor:
    """Grayscale PIL image -> uint8 tensor (C, S, S): squashed resize (no crop), optional equalisation."""
    cfg = preprocess_config(config)
    size = int(cfg["image_size"])
    x = TF.pil_to_tensor(to_grayscale(image))  # (1, H, W) uint8
    x = TF.resize(x, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    if cfg["equalize"]:
        x = TF.equalize(x)
    return x.expand(int(cfg["in_channels"]), -1, -1).contiguous()


def normalize(x: torch.Tensor, config: Any) -> torch.Tensor:
    """uint8 (..., C, S, S) -> float32 normalised with the model's mean/std."""
    cfg = preprocess_config(config)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    mean = torch.tensor(cfg["mean"], dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(cfg["std"], dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


def build_eval_transform(config: Any) -> Callable[[ImageSource], torch.Tensor]:
    """The eval transform for a model: any image source -> float tensor (C, S, S) ready for `model`."""
    cfg = preprocess_config(config)

    def transform(source: ImageSource) -> torch.Tensor:
        return normalize(prepare_image(load_image(source), cfg), cfg)

    return transform
