"""Helpers for the Space tests: launch `app.py` in a subprocess on a free local port, write test DICOMs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
XRAY_DIR = REPO.parent / "shared" / "data" / "chest_xray" / "train"
STARTUP_TIMEOUT_S = 300  # importing torch + gradio on a busy 2-core machine can take a minute or more


def xray_files(label: str = "NORMAL", n: int = 3) -> list[Path]:
    """The first `n` real X-rays of one class (sorted), or [] when the data is not there."""
    d = XRAY_DIR / label
    return sorted(d.glob("*.jpeg"))[:n] if d.is_dir() else []


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def space_env(model_dir: Path, port: int, **extra: str) -> dict[str, str]:
    """Environment for an offline local launch of the app."""
    env = dict(os.environ)
    env.update(
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
        PNEUMONIA_HF_MODEL=str(model_dir),
    )
    env.pop("PNEUMONIA_HF_EXAMPLES", None)
    env.update(extra)
    return env


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Poll the app's config route until it answers 200; fail early with the log if the process died."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/config", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"app not ready after {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@contextmanager
def launch_space(app_py: Path, model_dir: Path, log: Path, cwd: Path | None = None, **env_extra: str):
    """Run `python app_py` until the block ends; yields (url, log path). The log holds stdout and stderr."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(app_py)],
            cwd=str(cwd or app_py.parent),
            env=space_env(model_dir, port, **env_extra),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(url, proc, log)
            yield url, log
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def write_dicom(
    path: Path, gray8: np.ndarray, photometric: str = "MONOCHROME2", window: tuple[float, float] | None = (0, 2040)
) -> Path:
    """Save an 8-bit image as a 16-bit CR DICOM with a modality rescale and (optionally) a VOI window.

    Stored values are 16*gray + 1000; RescaleSlope 0.5 / Intercept -500 map them to 8*gray (0..2040), which
    the default window spans exactly. MONOCHROME1 stores inverted values, so both files show the same picture.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    stored = gray8.astype(np.int32) * 16 + 1000  # (H, W), 1000..5080
    if photometric == "MONOCHROME1":
        stored = 6080 - stored
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "CR"
    ds.set_pixel_data(stored.astype(np.uint16), photometric_interpretation=photometric, bits_stored=16)
    ds.RescaleSlope, ds.RescaleIntercept = 0.5, -500
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (window[0] + window[1]) / 2, window[1] - window[0]
    ds.save_as(path, enforce_file_format=True)
    return path
