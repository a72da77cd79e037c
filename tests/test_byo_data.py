"""A user's own data: folder:PATH and npz:PATH, wherever a dataset name works."""
import numpy as np
import pytest
import torch
from PIL import Image

from removalnet.data import dataset_labels, get_dataset_info, load_dataset
from removalnet.utils import RemovalNetError


def write_folder(root, *, classes=("cat", "dog", "emu"), per_class=(4, 2), size=(12, 12), mode="L", seed=0,
                 sizes=None):
    """train/<class>/*.png and test/<class>/*.png with random pixels; returns {split: (uint8 N x C x H x W, y)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in zip(("train", "test"), per_class):
        xs, ys = [], []
        for ci, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (sizes or {}).get((split, c, i), size)
                shape = (h, w) if mode == "L" else (h, w, 3)
                arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
                Image.fromarray(arr, mode=mode).save(root / split / c / f"{i:03d}.png")
                xs.append(arr[None] if mode == "L" else arr.transpose(2, 0, 1))
                ys.append(ci)
        out[split] = (np.stack(xs) if len({x.shape for x in xs}) == 1 else xs, np.array(ys))
    return out


def test_folder_dataset(tmp_path):
    arrays = write_folder(tmp_path / "pets", mode="RGB")
    ref = f"folder:{tmp_path / 'pets'}"
    info = get_dataset_info(ref)
    assert (info.num_classes, info.in_chans, info.input_size) == (3, 3, 12)
    assert info.classes == ("cat", "dog", "emu")
    x_np = arrays["train"][0].astype(np.float64) / 255
    np.testing.assert_allclose(info.mean, x_np.mean(axis=(0, 2, 3)), atol=1e-4)
    np.testing.assert_allclose(info.std, x_np.std(axis=(0, 2, 3), ddof=1), atol=1e-4)
    train = load_dataset(ref, "train")
    assert len(train) == 12 and list(dataset_labels(train)) == list(arrays["train"][1])
    x0, y0 = train[0]
    torch.testing.assert_close(x0, torch.from_numpy(arrays["train"][0][0]).float() / 255)
    test = load_dataset(ref, "test", input_size=16, in_chans=1)
    assert len(test) == 6 and test[0][0].shape == (1, 16, 16)


def test_folder_grayscale_val_and_size_option(tmp_path):
    write_folder(tmp_path / "d", mode="L", sizes={("train", "cat", 0): (20, 20)})
    with pytest.raises(RemovalNetError, match=r"mixed sizes .*20x20.*12x12|mixed sizes .*12x12.*20x20"):
        get_dataset_info(f"folder:{tmp_path / 'd'}")
    info = get_dataset_info(f"folder:{tmp_path / 'd'}?size=10&mean=0.5&std=0.25")
    assert (info.in_chans, info.input_size, info.mean, info.std) == (1, 10, (0.5,), (0.25,))
    assert load_dataset(info.name, "train")[0][0].shape == (1, 10, 10)
    (tmp_path / "d" / "test").rename(tmp_path / "d" / "val")
    assert len(load_dataset(f"folder:{tmp_path / 'd'}?size=10", "test")) == 6


def test_folder_errors(tmp_path):
    write_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(RemovalNetError, match="1 class"):
        get_dataset_info(f"folder:{tmp_path / 'one'}")
    (tmp_path / "notrain" / "test" / "a").mkdir(parents=True)
    with pytest.raises(RemovalNetError, match="no train/ folder"):
        get_dataset_info(f"folder:{tmp_path / 'notrain'}")
    for s in ("train", "test"):
        (tmp_path / "empty" / s / "a").mkdir(parents=True)
    with pytest.raises(RemovalNetError, match="no images"):
        get_dataset_info(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(RemovalNetError, match="is not a directory"):
        get_dataset_info(f"folder:{tmp_path / 'absent'}")
    write_folder(tmp_path / "ok")
    with pytest.raises(RemovalNetError, match="unknown option 'colour=3'"):
        get_dataset_info(f"folder:{tmp_path / 'ok'}?colour=3")
    with pytest.raises(RemovalNetError, match="has no option"):
        load_dataset(f"folder:{tmp_path / 'ok'}", "train", attribute=3)


def test_npz_dataset_split_rule(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)       # channels last
    y = np.repeat(np.arange(5), 10)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    info = get_dataset_info(f"npz:{tmp_path / 'a.npz'}")
    assert (info.num_classes, info.in_chans, info.input_size) == (5, 3, 8)
    train, test = (load_dataset(info.name, s) for s in ("train", "test"))
    assert (len(train), len(test)) == (40, 10)                          # a stratified 20% test split
    assert np.bincount(dataset_labels(test)).tolist() == [2] * 5
    # the split is scikit-learn's train_test_split(stratify=y, test_size=0.2, random_state=0), sorted
    from sklearn.model_selection import train_test_split
    tr, _ = train_test_split(np.arange(50), test_size=0.2, stratify=y, random_state=0)
    first = np.sort(tr)[0]
    torch.testing.assert_close(train[0][0], torch.from_numpy(x[first].transpose(2, 0, 1)).float() / 255)
    np.testing.assert_allclose(info.mean, (x[np.sort(tr)] / 255).mean(axis=(0, 1, 2)), atol=1e-4)


def test_npz_with_test_arrays_and_errors(tmp_path):
    x = np.random.default_rng(0).random((6, 1, 5, 5)).astype(np.float32)   # N x C x H x W floats
    np.savez(tmp_path / "b.npz", x=x, y=np.array([0, 1, 0, 1, 0, 1]), x_test=x[:2], y_test=np.array([1, 0]))
    ref = f"npz:{tmp_path / 'b.npz'}"
    assert len(load_dataset(ref, "test")) == 2 and len(load_dataset(ref, "train")) == 6
    torch.testing.assert_close(load_dataset(ref, "train")[3][0], torch.from_numpy(x[3]))
    np.savez(tmp_path / "c.npz", images=x, labels=np.zeros(6, dtype=int))
    with pytest.raises(RemovalNetError, match="must hold arrays 'x' .* and 'y'.*holds images, labels"):
        get_dataset_info(f"npz:{tmp_path / 'c.npz'}")
    np.savez(tmp_path / "d.npz", x=x * 255, y=np.arange(6) % 2)
    with pytest.raises(RemovalNetError, match=r"in \[0, 1\]"):
        get_dataset_info(f"npz:{tmp_path / 'd.npz'}")
    np.savez(tmp_path / "e.npz", x=x, y=np.zeros(6, dtype=int))
    with pytest.raises(RemovalNetError, match="1 class"):
        get_dataset_info(f"npz:{tmp_path / 'e.npz'}")
    with pytest.raises(RemovalNetError, match="does not exist"):
        get_dataset_info(f"npz:{tmp_path / 'none.npz'}")
