"""Load test of the Space's `/classify` endpoint: N concurrent gradio_client clients x M requests each.

    python benchmarks/load_space.py                              # launches space/app.py with a random-init model
    python benchmarks/load_space.py --model path/or/repo-id      # ... with this model
    python benchmarks/load_space.py --url http://127.0.0.1:7860  # an app that is already running

Prints the single-request latency (one client, sequential), then errors, p50/p95 latency and
requests/s under load. Every answer under load must equal the single-client one (probabilities,
decision, OOD flag and the Grad-CAM PNG's bytes); a difference counts as an error. Not a test:
numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO.parent / "shared" / "data" / "chest_xray" / "train" / "NORMAL"


@contextmanager
def launched_app(model: str | None):
    """Start space/app.py on a free port (offline; the tests' launcher) and yield its URL."""
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from space_helpers import launch_space

    tmp = Path(tempfile.mkdtemp(prefix="load-space-"))
    if model is None:  # no model given: a fresh one (speed does not depend on the weights)
        import torch

        from pneumonia_hf import PneumoniaCNN

        torch.manual_seed(0)
        model = str(tmp / "model")
        PneumoniaCNN().save_pretrained(model)
    local = Path(model).resolve()  # the app runs in space/: a relative folder must not be taken for a repo id
    with launch_space(REPO / "space" / "app.py", local if local.is_dir() else Path(model), tmp / "app.log") as (url, _):
        yield url


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation."""
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def answer(out: tuple) -> tuple:
    """What must not change between identical requests: probabilities, decision, OOD flag, heat-map bytes."""
    _, _, cam, result = out
    png = hashlib.sha256(Path(cam).read_bytes()).hexdigest() if cam else None
    probs = tuple(round(v, 6) for v in result["probabilities"].values())
    return probs, result["label"], result["ood"], png


def worker(url: str, image: str, n: int, download_dir: str, ref: tuple | None = None) -> tuple[list[float], list[str], tuple | None]:
    """One client sending n sequential requests: (latencies of good answers, errors, the last answer).

    An answer that differs from `ref` (a race between requests) counts as an error.
    """
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=download_dir)
    lat, errors, last = [], [], None
    for _ in range(n):
        t = time.perf_counter()
        try:
            last = answer(client.predict(handle_file(image), api_name="/classify"))
            if ref is not None and last != ref:
                errors.append(f"answer differs from the single-client one: {last} != {ref}")
                continue
            lat.append(time.perf_counter() - t)
        except Exception as e:  # count and go on: the point is to see errors under load
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return lat, errors, last


def run(url: str, image: str, clients: int, requests: int, single: int) -> None:
    """Single-request latency, then the concurrent load; prints the figures."""
    dl = tempfile.mkdtemp(prefix="load-space-dl-")
    lat1, err1, ref = worker(url, image, single + 1, tempfile.mkdtemp(dir=dl))  # the first one warms up
    if lat1[1:]:
        print(f"single client, {len(lat1) - 1} sequential requests: median {statistics.median(lat1[1:]) * 1000:.0f} ms, "
              f"min {min(lat1[1:]) * 1000:.0f} ms, errors {len(err1)}")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: worker(url, image, requests, tempfile.mkdtemp(dir=dl), ref), range(clients)))
    wall = time.perf_counter() - t0
    lat = [x for r in results for x in r[0]]
    errors = [e for r in results for e in r[1]]
    print(f"{clients} clients x {requests} requests = {clients * requests} in {wall:.1f} s")
    print(f"errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    if lat:
        print(f"latency p50 {pct(lat, 50) * 1000:.0f} ms, p95 {pct(lat, 95) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms")
    print(f"throughput {len(lat) / wall:.2f} requests/s")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, launch the app unless --url is given, run the load."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="an already running app (default: launch space/app.py)")
    p.add_argument("--model", default=None, help="model for the launched app (default: random-init)")
    p.add_argument("--image", default=None, help="the image every request sends (default: a real X-ray)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=20, help="requests per client")
    p.add_argument("--single", type=int, default=10, help="sequential requests for the single-request latency")
    args = p.parse_args(argv)
    image = args.image or str(sorted(DEFAULT_IMAGE.glob("*.jpeg"))[0])
    print(f"image: {image}")
    if args.url:
        run(args.url, image, args.clients, args.requests, args.single)
    else:
        with launched_app(args.model) as url:
            print(f"launched {url}")
            run(url, image, args.clients, args.requests, args.single)
    return 0


if __name__ == "__main__":
    sys.exit(main())
