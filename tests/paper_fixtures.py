"""Tiny random datasets in each paper dataset's real on-disk layout (never downloaded).

``write_paper_data(root)`` lays out a data root as the paper specs' ``data_root`` expects (README table of
files under ``data/``): ``cifar-10-batches-py/`` (python pickles), ``cinic10/{train,valid,test}/<class>/``,
``gtsrb/`` (torchvision's GTSRB layout), ``celeba/`` (images plus the attribute, partition, identity, bbox and
landmark files torchvision's CelebA reads), ``skin-lesion/`` and ``bcn20000/`` class folders and
``imagenet/{train,val}/<wnid>/``. The project's loaders read them through the same code as a user's files;
only torchvision's MD5 checks of the official archives cannot pass on these files: :func:`accept_tiny_files`
reduces them to "the file exists" (a monkeypatch, for tests only).

The writers used by single-dataset tests (``write_cifar``, ``write_png``, ``write_celeba``,
``write_gtsrb``, ``write_idx``, ``write_fashion_mnist``) live here too.
"""
from __future__ import annotations

import gzip
import itertools
import os
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SKIN_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
BCN_CLASSES = ("ak", "bcc", "bkl", "df", "mel", "nv", "scc", "vasc")

# images per class written for each split: enough for the smoke scale's 5 training images per class
# (a 15% S_LSD partition needs at least 4 per class) and 2 test images per class
TRAIN_PER_CLASS = 6
TEST_PER_CLASS = 2


def write_png(path: Path, rgb, size=(40, 30)) -> None:
    """A constant-colour image of ``size`` (width, height); the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), rgb, np.uint8)).save(path)


def _random_image(path: Path, rng: np.random.Generator, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)


def write_cifar(root: Path, per_batch=3, seed=0, labels=None, test_size=None) -> dict:
    """``root/cifar-10-batches-py/`` with five training batches of ``per_batch`` images and a test batch of
    ``test_size`` (default ``per_batch``); ``labels(n)`` gives a batch's labels (random by default)."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = test_size if name == "test_batch" and test_size else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        lab = labels(n) if labels else rng.integers(0, 10, size=n).tolist()
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "labels": lab}, f)
        out[name] = (data, lab)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, f)
    return out


def write_gtsrb(root: Path, train: dict[str, int], test_labels: list[int], rng=None) -> None:
    """torchvision's GTSRB layout: ``gtsrb/GTSRB/Training/<class>/*.ppm`` (``train``: class folder -> count),
    ``gtsrb/GTSRB/Final_Test/Images/*.ppm`` and ``gtsrb/GT-final_test.csv`` with ``test_labels``."""
    rng = rng or np.random.default_rng(0)
    g = root / "gtsrb"
    for cls, n in train.items():
        for j in range(n):
            _random_image(g / "GTSRB" / "Training" / cls / f"{j:05d}_{j:05d}.ppm", rng, (36, 40))
    (g / "GTSRB" / "Final_Test" / "Images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, y in enumerate(test_labels):
        _random_image(g / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm", rng, (45, 50))
        rows.append(f"{i:05d}.ppm;45;50;5;5;40;45;{y}\n")
    (g / "GT-final_test.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
                                         + "".join(rows))


def write_celeba(root: Path, attrs: np.ndarray, partition: list[int], rng=None) -> None:
    """torchvision's CelebA layout: ``celeba/img_align_celeba/*.jpg`` and the five annotation files.
    Images are constant (40 * i) unless ``rng`` is given (random pixels)."""
    from removalnet.data.celeba import ATTRIBUTES

    d = root / "celeba"
    (d / "img_align_celeba").mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(attrs))]
    for i, n in enumerate(names):
        if rng is None:
            Image.fromarray(np.full((26, 22, 3), 40 * i % 256, np.uint8)).save(d / "img_align_celeba" / n)
        else:
            _random_image(d / "img_align_celeba" / n, rng, (22, 26))
    (d / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, partition)))
    (d / "identity_CelebA.txt").write_text("".join(f"{n} {i + 1}\n" for i, n in enumerate(names)))
    (d / "list_bbox_celeba.txt").write_text(f"{len(names)}\nimage_id x_1 y_1 width height\n"
                                            + "".join(f"{n} 1 2 3 4\n" for n in names))
    (d / "list_landmarks_align_celeba.txt").write_text(
        f"{len(names)}\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
        "rightmouth_x rightmouth_y\n" + "".join(f"{n} " + " ".join(["5"] * 10) + "\n" for n in names))
    (d / "list_attr_celeba.txt").write_text(
        f"{len(names)}\n" + " ".join(ATTRIBUTES) + "\n"
        + "".join(f"{n} " + " ".join(f"{v:2d}" for v in row) + "\n" for n, row in zip(names, attrs)))


def _class_folders(base: Path, splits: dict[str, int], classes, rng, size=(12, 10), ext="png") -> None:
    for split, n in splits.items():
        for c in classes:
            for j in range(n):
                _random_image(base / split / c / f"{j}.{ext}", rng, size)


def write_idx(path: Path, arr: np.ndarray, compress: bool) -> None:
    """An IDX file of unsigned bytes (gzipped when ``compress``), as Fashion-MNIST ships."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    data = bytes((0, 0, 0x08, arr.ndim)) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def write_fashion_mnist(directory: Path, train_per_class=TRAIN_PER_CLASS, test_per_class=TEST_PER_CLASS,
                        seed=0) -> Path:
    """Fashion-MNIST's four gzipped IDX files (random 28 x 28 images, labels 0..9 in turn) in ``directory``."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, per in (("train", train_per_class), ("t10k", test_per_class)):
        y = np.arange(10 * per) % 10
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (len(y), 28, 28)), True)
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", y, True)
    return directory


def accept_tiny_files(monkeypatch) -> None:
    """Reduce torchvision's MD5 checks of CIFAR-10 and CelebA to "the files exist" (the tiny files written
    here cannot match the official checksums; everything else of the loaders runs as for a user)."""
    import torchvision
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    monkeypatch.setattr(torchvision.datasets.CelebA, "_check_integrity",
                        lambda self: os.path.isdir(os.path.join(self.root, self.base_folder, "img_align_celeba")))


def write_paper_data(root: Path, seed: int = 0) -> Path:
    """Every dataset of ``configs/paper/`` under ``root`` in its real layout, ``TRAIN_PER_CLASS`` training
    and ``TEST_PER_CLASS`` test images per class (ImageNet: one per class, 1000 classes). Returns ``root``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    # CIFAR-10: 5 training batches with every class in each batch, one test batch
    n_tr, counter = TRAIN_PER_CLASS * 10, itertools.count()
    assert n_tr % 5 == 0
    write_cifar(root, per_batch=n_tr // 5, seed=seed, labels=lambda n: [next(counter) % 10 for _ in range(n)],
                test_size=TEST_PER_CLASS * 10)
    # CINIC-10 (S_LSD of CIFAR-10)
    _class_folders(root / "cinic10", {"train": TRAIN_PER_CLASS, "valid": TEST_PER_CLASS, "test": TEST_PER_CLASS},
                   CIFAR10_CLASSES, rng, (32, 32))
    # GTSRB: 43 numbered class folders
    write_gtsrb(root, {f"{c:05d}": TRAIN_PER_CLASS for c in range(43)},
                [c for c in range(43) for _ in range(TEST_PER_CLASS)], rng)
    # CelebA: Male (20) and Smiling (31) balanced within each split; 0 train, 1 valid, 2 test
    per = {0: 4 * TRAIN_PER_CLASS, 1: 4, 2: 4 * TEST_PER_CLASS}
    partition = [p for p, n in per.items() for _ in range(n)]
    attrs = rng.choice([-1, 1], size=(len(partition), 40))
    for p, n in per.items():
        rows = [i for i, q in enumerate(partition) if q == p]
        for k, i in enumerate(rows):  # all four (male, smiling) combinations in every split
            attrs[i, 20] = 1 if k % 2 else -1
            attrs[i, 31] = 1 if (k // 2) % 2 else -1
    write_celeba(root, attrs, partition, rng)
    # skin lesion (HAM10000 classes) and BCN20000 (ISIC 2019 classes)
    _class_folders(root / "skin-lesion", {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS}, SKIN_CLASSES, rng,
                   (20, 15), "jpg")
    _class_folders(root / "bcn20000", {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS}, BCN_CLASSES, rng,
                   (20, 15), "jpg")
    # ImageNet: 1000 wnid folders, one tiny JPEG per class and split
    wnids = [f"n{c:08d}" for c in range(1000)]
    _class_folders(root / "imagenet", {"train": 1, "val": 1}, wnids, rng, (10, 8), "JPEG")
    return root
