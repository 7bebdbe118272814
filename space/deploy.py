"""Assemble the Space (app, README, requirements, the pneumonia_hf package) into a folder and upload it.

    python space/deploy.py --out /tmp/space-build --dry-run     # assemble only
    python space/deploy.py --repo-id USER/SPACE [--model-repo-id USER/MODEL] [--private]

Needs only the standard library to assemble and huggingface_hub to upload; the package is copied as
source, so this works without installing pneumonia-hf.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

SPACE_DIR = Path(__file__).resolve().parent
REPO_ROOT = SPACE_DIR.parent
SPACE_FILES = ("app.py", "README.md", "requirements.txt")
PACKAGE = "pneumonia_hf"
CHECKPOINT_FILES = ("model.safetensors", "config.json")


def _set_models(readme: str, model_repo_id: str) -> str:
    """Point the README's `models:` YAML list at one model repo."""
    return re.sub(r"^models:\n(?:  - .*\n)+", f"models:\n  - {model_repo_id}\n", readme, count=1, flags=re.M)


def assemble(out: Path, model_repo_id: str | None = None) -> Path:
    """Write the deployable Space into `out` (emptied first) and return it."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in SPACE_FILES:
        shutil.copy2(SPACE_DIR / name, out / name)
    if model_repo_id:
        readme = out / "README.md"
        readme.write_text(_set_models(readme.read_text(encoding="utf-8"), model_repo_id), encoding="utf-8")
    src = REPO_ROOT / PACKAGE
    shutil.copytree(src, out / PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    # Only a complete checkpoint travels; a half-written pretrained/ would fail at start-up on the Space.
    ckpt = out / PACKAGE / "pretrained"
    if ckpt.exists() and not (ckpt / "model.safetensors").is_file():
        shutil.rmtree(ckpt)
    return out


def has_checkpoint(folder: Path) -> bool:
    """Whether the assembled folder carries the bundled checkpoint."""
    return all((folder / PACKAGE / "pretrained" / f).is_file() for f in CHECKPOINT_FILES)


def upload(folder: Path, repo_id: str, private: bool, model_repo_id: str | None, token: str | None) -> str:
    """Create the Space if needed, set PNEUMONIA_HF_MODEL when the weights come from a model repo, upload."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    if model_repo_id and not has_checkpoint(folder):
        api.add_space_variable(repo_id, "PNEUMONIA_HF_MODEL", model_repo_id)
    info = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, repo_type="space", commit_message="Deploy the pneumonia-hf Space"
    )
    return str(info)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, assemble, and upload unless --dry-run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo-id", help="Space repo id, e.g. USER/pneumonia-demo (required unless --dry-run)")
    p.add_argument("--out", type=Path, default=None, help="assemble into this folder (default: a temporary one)")
    p.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=False, help="assemble only")
    p.add_argument("--model-repo-id", default=None, help="Hub model repo for README `models:` and PNEUMONIA_HF_MODEL")
    p.add_argument("--private", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    args = p.parse_args(argv)
    if not args.dry_run and not args.repo_id:
        p.error("--repo-id is required unless --dry-run")

    out = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="pneumonia-space-"))
    folder = assemble(out, args.model_repo_id)
    files = sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file())
    print(f"assembled {len(files)} files in {folder}")
    if not has_checkpoint(folder):
        print(
            "warning: no bundled checkpoint (pneumonia_hf/pretrained/model.safetensors); the Space needs the "
            "variable PNEUMONIA_HF_MODEL (pass --model-repo-id)",
            file=sys.stderr,
        )
    if args.dry_run:
        print("dry run: nothing uploaded")
        return 0
    print(upload(folder, args.repo_id, args.private, args.model_repo_id, args.token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
