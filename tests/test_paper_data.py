"""The loaders of every paper dataset read files in the dataset's real on-disk layout (paper_fixtures.py)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from removalnet.data import dataset_labels, get_dataset_info, load_dataset

from paper_fixtures import TEST_PER_CLASS, TRAIN_PER_CLASS, accept_tiny_files

# dataset, split -> expected number of samples
SIZES = {
    ("cifar10", "train"): 10 * TRAIN_PER_CLASS, ("cifar10", "test"): 10 * TEST_PER_CLASS,
    ("cinic10", "train"): 10 * TRAIN_PER_CLASS, ("cinic10", "val"): 10 * TEST_PER_CLASS,
    ("cinic10", "test"): 10 * TEST_PER_CLASS,
    ("gtsrb", "train"): 43 * TRAIN_PER_CLASS, ("gtsrb", "test"): 43 * TEST_PER_CLASS,
    ("celeba-20", "train"): 4 * TRAIN_PER_CLASS, ("celeba-20", "val"): 4, ("celeba-20", "test"): 4 * TEST_PER_CLASS,
    ("celeba-31", "train"): 4 * TRAIN_PER_CLASS, ("celeba-31", "test"): 4 * TEST_PER_CLASS,
    ("skin-lesion", "train"): 7 * TRAIN_PER_CLASS, ("skin-lesion", "test"): 7 * TEST_PER_CLASS,
    ("bcn20000", "train"): 8 * TRAIN_PER_CLASS, ("bcn20000", "test"): 8 * TEST_PER_CLASS,
    ("imagenet", "train"): 1000, ("imagenet", "val"): 1000, ("imagenet", "test"): 1000,
}


@pytest.mark.parametrize("name,split", sorted(SIZES))
def test_loader_reads_real_layout(paper_data_root, monkeypatch, name, split):
    accept_tiny_files(monkeypatch)
    info = get_dataset_info(name)
    ds = load_dataset(name, split, paper_data_root)
    assert len(ds) == SIZES[name, split]
    labels = dataset_labels(ds)
    per_class = SIZES[name, split] // info.num_classes
    # every class present, equally often (the fixtures are balanced), label ids in range
    assert np.bincount(labels, minlength=info.num_classes).tolist() == [per_class] * info.num_classes
    for i in (0, len(ds) - 1):
        x, y = ds[i]
        assert x.dtype == torch.float32 and x.shape == (3, info.input_size, info.input_size)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and y == labels[i]


def test_cifar10_pickles_decoded_pixel_exact(paper_data_root, monkeypatch):
    accept_tiny_files(monkeypatch)
    with open(paper_data_root / "cifar-10-batches-py" / "data_batch_3", "rb") as f:
        batch = pickle.load(f)
    ds = load_dataset("cifar10", "train", paper_data_root)
    n = len(batch["labels"])
    x, y = ds[2 * n + 1]  # second image of the third batch
    assert y == batch["labels"][1]
    assert torch.equal(x, torch.from_numpy(batch["data"][1].reshape(3, 32, 32)).float() / 255)


def test_celeba_attributes_from_files(paper_data_root, monkeypatch):
    accept_tiny_files(monkeypatch)
    lines = (paper_data_root / "celeba" / "list_attr_celeba.txt").read_text().splitlines()[2:]
    part = [int(l.split()[1]) for l in (paper_data_root / "celeba" / "list_eval_partition.txt").read_text().splitlines()]
    rows = np.array([[int(v) for v in l.split()[1:]] for l in lines])
    test_rows = rows[np.array(part) == 2]
    for name, col in (("celeba-20", 20), ("celeba-31", 31)):
        assert dataset_labels(load_dataset(name, "test", paper_data_root)).tolist() == \
            (test_rows[:, col] > 0).astype(int).tolist()


def test_gtsrb_labels_from_folder_names_and_csv(paper_data_root):
    train = load_dataset("gtsrb", "train", paper_data_root)
    folders = [int(p.split("/")[-2]) for p, _ in train.base._samples]
    assert dataset_labels(train).tolist() == folders
    csv = (paper_data_root / "gtsrb" / "GT-final_test.csv").read_text().splitlines()[1:]
    assert dataset_labels(load_dataset("gtsrb", "test", paper_data_root)).tolist() == \
        [int(l.split(";")[-1]) for l in csv]
