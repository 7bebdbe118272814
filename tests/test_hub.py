"""Hub round trips: save/load locally, push to and pull from a real HTTP (fake) Hub, offline loads, strict weights."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_CONFIG, randomize_batchnorm
from pneumonia_hf import PneumoniaCNN

REPO_ID = "test-user/pneumonia-tiny"

# Runs in a subprocess so HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE are set before huggingface_hub reads them.
# Every comparison happens inside that one process, so "bit-identical" never depends on cross-process numerics.
CLIENT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from safetensors.torch import load_file, save_file
    from pneumonia_hf import PneumoniaCNN

    mode, repo_id, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    inputs = load_file(work / "inputs.safetensors")
    model = PneumoniaCNN(**json.loads((work / "config.json").read_text()))
    model.load_state_dict(load_file(work / "state.safetensors"), strict=True)
    model.eval()
    if mode == "push":
        print("pushed:", model.push_to_hub(repo_id))
    pulled = PneumoniaCNN.from_pretrained(repo_id, cache_dir=work / "cache")
    with torch.no_grad():
        out = {"ref": model(inputs["x"]), "out": pulled(inputs["x"])}
    out.update({"pulled." + k: v.contiguous() for k, v in pulled.state_dict().items()})
    save_file(out, work / f"{mode}.safetensors")
    attrs = {k: getattr(pulled, k) for k in ("in_channels", "image_size", "mean", "std", "labels", "threshold")}
    errors = {}
    if mode == "push":  # how the client reads the server's 404s
        from huggingface_hub import hf_hub_download
        for what, repo, name in [("file", repo_id, "missing.bin"), ("repo", "test-user/no-such-repo", "config.json")]:
            try:
                hf_hub_download(repo, name, cache_dir=work / "cache")
            except Exception as e:
                errors[what] = type(e).__name__
    (work / f"{mode}.json").write_text(json.dumps({"attrs": attrs, "training": pulled.training, "errors": errors}))
    """
)


def run_client(mode: str, work: Path, env: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict]:
    """Run CLIENT (`push` = push + pull, `offline` = pull only) and return its tensors and JSON report."""
    r = subprocess.run([sys.executable, "-c", CLIENT, mode, REPO_ID, str(work)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"{mode} client failed:\n{r.stdout}\n{r.stderr}"
    return load_file(work / f"{mode}.safetensors"), json.loads((work / f"{mode}.json").read_text())


@pytest.fixture(scope="module")
def pushed(hub_server, tmp_path_factory):
    """Push a tiny non-default model to a fresh fake Hub, pull it into an empty cache; keep server and results."""
    work = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    model = randomize_batchnorm(PneumoniaCNN(**TINY_CONFIG)).eval()
    (work / "config.json").write_text(json.dumps(TINY_CONFIG))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, work / "state.safetensors")
    save_file({"x": torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))}, work / "inputs.safetensors")
    model.save_pretrained(work / "local")  # what push_to_hub should have uploaded
    env = hub_server.env(work / "hf_home")
    assert not (work / "cache").exists()
    tensors, report = run_client("push", work, env)
    return {"server": hub_server, "env": env, "work": work, "model": model, "tensors": tensors, "report": report}


def test_push_then_pull_gives_bit_identical_outputs_and_weights(pushed):
    t = pushed["tensors"]
    assert torch.equal(t["ref"], t["out"])
    assert t["ref"].shape == (3,)
    expected = pushed["model"].state_dict()
    pulled = {k.removeprefix("pulled."): v for k, v in t.items() if k.startswith("pulled.")}
    assert pulled.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(pulled[k], v), k
    assert pushed["report"]["training"] is False  # from_pretrained returns an eval-mode model


def test_push_then_pull_gives_identical_config(pushed):
    local = json.loads((pushed["work"] / "local" / "config.json").read_text())
    for k, v in TINY_CONFIG.items():
        assert local[k] == v
    (cached,) = (pushed["work"] / "cache").glob("models--test-user--pneumonia-tiny/snapshots/*/config.json")
    assert json.loads(cached.read_text()) == local
    m = pushed["model"]
    expected = {"in_channels": m.in_channels, "image_size": 64, "mean": m.mean, "std": m.std, "labels": m.labels,
                "threshold": 0.37}
    assert pushed["report"]["attrs"] == expected


def test_push_and_pull_really_went_over_http(pushed):
    server = pushed["server"]
    assert server.unhandled == []
    stored = server.files(REPO_ID)
    local = pushed["work"] / "local"
    assert stored.keys() == {"model.safetensors", "config.json", "README.md"}
    for name, data in stored.items():
        assert data == (local / name).read_bytes(), name
    for name in ("config.json", "model.safetensors"):
        assert ("GET", f"/{REPO_ID}/resolve/main/{name}") in server.requests
        (cached,) = (pushed["work"] / "cache").glob(f"models--test-user--pneumonia-tiny/snapshots/*/{name}")
        assert cached.read_bytes() == stored[name]
    assert pushed["report"]["errors"] == {"file": "RemoteEntryNotFoundError", "repo": "RepositoryNotFoundError"}
    posts = [p for m, p in server.requests if m == "POST"]
    assert "/api/repos/create" in posts
    assert f"/api/models/{REPO_ID}/commit/main" in posts


def test_from_pretrained_offline_from_warm_cache(pushed):
    server, work = pushed["server"], pushed["work"]
    n_requests = len(server.requests)
    env = {**pushed["env"], "HF_HUB_OFFLINE": "1"}
    tensors, _ = run_client("offline", work, env)
    assert torch.equal(tensors["ref"], tensors["out"])
    assert len(server.requests) == n_requests  # nothing touched the network


# -- local folders ---------------------------------------------------------------------------------------------------


def test_save_pretrained_writes_safetensors_config_and_card_only(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (tmp_path / "README.md").read_text()
    assert "library_name: pneumonia-hf" in card and "pipeline_tag: image-classification" in card
    assert load_file(tmp_path / "model.safetensors").keys() == tiny_model.state_dict().keys()


def test_local_folder_round_trip_is_bit_identical(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    loaded = PneumoniaCNN.from_pretrained(tmp_path)
    x = torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(tiny_model(x), loaded(x))
    assert (loaded.threshold, loaded.image_size, loaded.labels) == (0.37, 64, ["NORMAL", "PNEUMONIA"])


@pytest.mark.parametrize("change", ["extra_key", "missing_key"])
def test_strict_loading_refuses_mismatched_weights(tiny_model, tmp_path, change):
    tiny_model.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    if change == "extra_key":
        state["head.extra"] = torch.zeros(3)
    else:
        del state["head.bias"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(RuntimeError, match="head.extra" if change == "extra_key" else "head.bias"):
        PneumoniaCNN.from_pretrained(tmp_path)


def test_from_pretrained_folder_without_weights_is_a_clear_error(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        PneumoniaCNN.from_pretrained(tmp_path)
