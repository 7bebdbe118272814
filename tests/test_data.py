"""Data: patient ids, patient-grouped folds, class-balanced samplers, and loading image folders / parquet files."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import DATA_DIR, write_xray_folder
from pneumonia_hf.data import (BalancedSampler, build_folds, decode_dataset, grouped_subset, load_source, patient_id,
                               to_tensors)

TINY_PREP = {"in_channels": 1, "image_size": 32, "mean": [0.5], "std": [0.25], "equalize": False}


# -- patient ids -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("person1203_bacteria_3154.jpeg", "person1203"),
    ("person1_virus_6.jpeg", "person1"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-0588-0001.jpeg", "NORMAL2-IM-0588"),
    ("/data/chest_xray/train/PNEUMONIA/person1203_bacteria_3154.jpeg", "person1203"),
    ("scan_0001.png", None),
    ("IM-0115.jpeg", None),
    ("", None),
    (None, None),
])
def test_patient_id(name, expected):
    assert patient_id(name) == expected


# -- folds -----------------------------------------------------------------------------------------------------------


def synthetic_patients(n_patients: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and patient ids: 1-4 images per patient, one class per patient, ~74 % pneumonia like the real set."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for i in range(n_patients):
        y = int(rng.random() < 0.74)
        for _ in range(rng.integers(1, 5)):
            labels.append(y)
            groups.append(f"p{i}")
    return np.array(labels), np.array(groups)


@pytest.mark.parametrize("n_folds", [2, 5])
def test_build_folds_groups_patients_and_keeps_class_ratio(n_folds):
    labels, groups = synthetic_patients()
    fold = build_folds(labels, groups, n_folds, seed=0)
    assert set(fold.tolist()) == set(range(n_folds))
    for g in np.unique(groups):  # no patient in two folds
        assert len(set(fold[groups == g].tolist())) == 1, g
    overall = labels.mean()
    for k in range(n_folds):
        assert abs(labels[fold == k].mean() - overall) < 0.05, (k, labels[fold == k].mean(), overall)
        assert abs((fold == k).mean() - 1 / n_folds) < 0.05
    assert np.array_equal(fold, build_folds(labels, groups, n_folds, seed=0))  # seeded
    assert not np.array_equal(fold, build_folds(labels, groups, n_folds, seed=1))


def test_build_folds_needs_enough_patients():
    with pytest.raises(ValueError, match="3 patients cannot fill 5 folds"):
        build_folds([0, 1, 1, 0], ["a", "b", "b", "c"], 5, seed=0)


def test_grouped_subset_is_patient_grouped_and_stratified():
    labels, groups = synthetic_patients()
    keep = grouped_subset(labels, groups, 0.25, seed=0)
    assert 0.2 < keep.mean() < 0.3
    assert abs(labels[keep].mean() - labels.mean()) < 0.05
    assert not set(groups[keep]) & set(groups[~keep])
    assert grouped_subset(labels, groups, 1.0, seed=0).all()


# -- samplers --------------------------------------------------------------------------------------------------------

IMBALANCED = torch.tensor([0] * 1000 + [1] * 3000)  # 25 % / 75 %, like NORMAL / PNEUMONIA


def stream(mode: str, epoch: int = 0, seed: int = 0, labels: torch.Tensor = IMBALANCED) -> list[int]:
    s = BalancedSampler(labels, mode, seed)
    s.set_epoch(epoch)
    idx = list(s)
    assert len(idx) == len(s)
    return idx


def test_weighted_sampler_balances_classes_over_an_epoch():
    idx = stream("weighted")
    assert len(idx) == len(IMBALANCED)
    share = IMBALANCED[idx].float().mean().item()
    assert abs(share - 0.5) < 0.03, share  # vs 0.75 without weighting
    assert set(idx) <= set(range(len(IMBALANCED)))


def test_oversample_is_exactly_balanced_and_keeps_every_image():
    idx = stream("oversample")
    counts = Counter(IMBALANCED[idx].tolist())
    assert counts[0] == counts[1] == 3000
    assert set(idx) == set(range(len(IMBALANCED)))  # every original image, majority ones exactly once
    per_index = Counter(idx)
    assert all(per_index[i] == 1 for i in range(1000, 4000))
    assert all(per_index[i] == 3 for i in range(1000))


def test_none_sampler_is_a_permutation():
    idx = stream("none")
    assert sorted(idx) == list(range(len(IMBALANCED)))
    assert idx != list(range(len(IMBALANCED)))


@pytest.mark.parametrize("mode", ["weighted", "oversample", "none"])
def test_sampler_stream_is_fixed_by_seed_and_epoch(mode):
    assert stream(mode, epoch=3, seed=7) == stream(mode, epoch=3, seed=7)  # resumed run / other processes
    assert stream(mode, epoch=3, seed=7) != stream(mode, epoch=4, seed=7)  # fresh order each epoch
    assert stream(mode, epoch=3, seed=7) != stream(mode, epoch=3, seed=8)


# -- loading sources -------------------------------------------------------------------------------------------------


def xray_bytes(n_per_class: int) -> tuple[list[bytes], list[str]]:
    """Encoded real X-rays and their class names (NORMAL first)."""
    out, names = [], []
    for label in ("NORMAL", "PNEUMONIA"):
        files = sorted((DATA_DIR / "train" / label).glob("*.jp*g"))[:n_per_class]
        if len(files) < n_per_class:
            pytest.skip(f"no real X-rays under {DATA_DIR}")
        out += [f.read_bytes() for f in files]
        names += [label] * n_per_class
    return out, names


def write_parquet(path, images: list[bytes], labels: list, label_feature=None) -> str:
    """A parquet file of encoded images without file names (like a Hub dataset), with the given labels."""
    from datasets import Dataset, Features, Image, Value

    features = Features({"image": Image(), "label": label_feature or Value("string")})
    ds = Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images], "label": labels}, features=features)
    ds.to_parquet(str(path))
    return str(path)


def test_image_folder_gives_labels_paths_and_patients(datasets_cache, tmp_path):
    root = write_xray_folder(tmp_path / "xr", 3)
    ds = load_source(str(root), "train")
    assert {"image", "label", "path", "patient"} <= set(ds.column_names)
    assert ds.features["label"].names == ["NORMAL", "PNEUMONIA"]
    for path, label, patient in zip(ds["path"], ds["label"], ds["patient"]):
        assert ("PNEUMONIA" if label else "NORMAL") in path
        assert patient == patient_id(path)


def test_image_folder_with_one_class_is_a_clear_error(datasets_cache, tmp_path):
    root = write_xray_folder(tmp_path / "xr", 3)
    for f in (root / "train" / "NORMAL").iterdir():
        f.unlink()
    (root / "train" / "NORMAL").rmdir()
    with pytest.raises(ValueError, match="NORMAL.*PNEUMONIA.*both classes are needed"):
        load_source(str(root), "train")


def test_parquet_with_one_class_is_a_clear_error(datasets_cache, tmp_path):
    images, _ = xray_bytes(2)
    path = write_parquet(tmp_path / "one.parquet", images, ["PNEUMONIA"] * len(images))
    with pytest.raises(ValueError, match="NORMAL"):
        load_source(path, "train")


def test_parquet_with_reversed_class_label_order_maps_to_normal_0(datasets_cache, tmp_path):
    from datasets import ClassLabel

    images, names = xray_bytes(3)
    reversed_names = ["PNEUMONIA", "NORMAL"]
    path = write_parquet(tmp_path / "rev.parquet", images, [reversed_names.index(n) for n in names],
                         ClassLabel(names=reversed_names))
    ds = load_source(path, "train")
    assert ds.features["label"].names == ["NORMAL", "PNEUMONIA"]
    assert list(ds["label"]) == [0, 0, 0, 1, 1, 1]


def test_parquet_with_string_labels_in_any_case_and_extra_classes(datasets_cache, tmp_path):
    images, names = xray_bytes(3)
    labels = [n.lower() if i % 2 else n.capitalize() for i, n in enumerate(names)]  # "Normal", "normal", ...
    path = write_parquet(tmp_path / "str.parquet", images + images[:1], labels + ["COVID-19"])
    ds = load_source(path, "train")
    assert len(ds) == 6  # the row of an unknown class is dropped
    assert list(ds["label"]) == [0, 0, 0, 1, 1, 1]


def test_parquet_without_file_names_falls_back_to_one_group_per_image(datasets_cache, tmp_path, caplog):
    images, names = xray_bytes(3)
    path = write_parquet(tmp_path / "nameless.parquet", images, names)
    with caplog.at_level(logging.WARNING, logger="pneumonia_hf.data"):
        ds = load_source(path, "train")
    assert "no patient ids" in caplog.text and "one group per image" in caplog.text
    assert len(set(ds["patient"])) == len(ds) == 6
    assert len(set(ds["path"])) == 6
    pixels, skipped = decode_dataset(ds, TINY_PREP)
    assert skipped == [] and len(pixels) == 6


def test_corrupt_image_is_skipped_and_counted(datasets_cache, tmp_path, caplog):
    root = write_xray_folder(tmp_path / "xr", 3, corrupt=True)
    ds = load_source(str(root), "train")
    assert len(ds) == 7
    with caplog.at_level(logging.WARNING, logger="pneumonia_hf.data"):
        out, skipped = decode_dataset(ds, TINY_PREP)
    assert len(out) == 6
    assert [p.rsplit("/", 1)[-1] for p, _ in skipped] == ["person9999_bacteria_9999.jpeg"]
    assert skipped[0][1]  # a reason
    assert "skipping unreadable image" in caplog.text
    assert all(out["ok"])
    px, y = to_tensors(out)
    assert px.shape == (6, 1, 32, 32) and px.dtype == torch.uint8
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
