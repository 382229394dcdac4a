"""Dataset readers, safe loading, ZCA and the embedded MNIST subset (tiny files built in tmp_path)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from dpcore.data import DATASET_NAMES, ZCA, load_dataset
from dpcore.data.idx import read_idx
from dpcore.errors import DataError, DataWarning
from dpcore.safe_load import safe_pickle_load, safe_torch_load

RNG = np.random.default_rng(123)


# ----------------------------------------------------------------------------- helpers


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_mnist(raw_dir, n_train=12, n_test=5, gz=False):
    raw_dir.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": RNG.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": RNG.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        data = _idx_bytes(arr)
        if gz:
            (raw_dir / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (raw_dir / name).write_bytes(data)
    return arrays


def _cifar_batches(n=4, protocol=2):
    batches = {}
    for i in range(1, 6):
        data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        batches[f"data_batch_{i}"] = {"data": data, "labels": [int(v) for v in RNG.integers(0, 10, n)]}
    batches["test_batch"] = {
        "data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
        "labels": [int(v) for v in RNG.integers(0, 10, n)],
    }
    batches["batches.meta"] = {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}
    return {k: (v, pickle.dumps(v, protocol=protocol if k != "test_batch" else 4)) for k, v in batches.items()}


def _check_cifar(ds, batches):
    x_train = np.concatenate([batches[f"data_batch_{i}"][0]["data"] for i in range(1, 6)])
    y_train = sum((batches[f"data_batch_{i}"][0]["labels"] for i in range(1, 6)), [])
    assert ds.x_train.dtype == torch.uint8 and ds.x_train.shape == (20, 3, 32, 32)
    assert ds.x_test.shape == (4, 3, 32, 32)
    assert np.array_equal(ds.x_train.numpy().reshape(20, -1), x_train)
    assert ds.y_train.dtype == torch.int64 and ds.y_train.tolist() == y_train
    assert ds.y_test.tolist() == batches["test_batch"][0]["labels"]
    assert ds.classes == tuple(f"c{i}" for i in range(10)) and ds.num_classes == 10
    assert ds.augment == "crop_flip" and ds.mean == (0.4914, 0.4822, 0.4465)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


class _NotATensor:
    def __init__(self):
        self.value = 3


# ----------------------------------------------------------------------------- MNIST / IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_and_roots(tmp_path, gz):
    arrays = _write_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    for root in (tmp_path, tmp_path / "MNIST", tmp_path / "MNIST" / "raw"):
        ds = load_dataset("mnist", root)
        assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_train.dtype == torch.uint8
        assert np.array_equal(ds.x_train[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
        assert np.array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
        assert ds.y_train.dtype == torch.int64 and ds.num_classes == 10 and ds.mean == (0.1307,)
        assert ds.augment == "none" and ds.classes == tuple("0123456789")
    _write_mnist(tmp_path / "FashionMNIST" / "raw", gz=gz)
    assert load_dataset("fashion-mnist", tmp_path).classes[0] == "T-shirt/top"


def test_idx_errors(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _write_mnist(raw)
    data = (raw / "train-images-idx3-ubyte").read_bytes()
    (raw / "train-images-idx3-ubyte").write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", tmp_path)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x12\x34" + data[2:])
    with pytest.raises(DataError, match="magic"):
        read_idx(raw / "train-images-idx3-ubyte")
    with pytest.raises(DataError) as err:  # (mnist itself falls back to the package's copy: see below)
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    msg = str(err.value)
    assert "\n" not in msg and "--data-root" in msg and "train-images-idx3-ubyte" in msg
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="incomplete"):
        load_dataset("mnist", tmp_path)


def test_mnist_without_a_data_root_is_the_package_copy_of_all_of_it(tmp_path):
    ds = load_dataset("mnist", tmp_path / "nowhere")  # no MNIST files there: the copy shipped in the package
    assert ds.name == "mnist" and tuple(ds.x_train.shape) == (60000, 1, 28, 28) and ds.x_test.shape[0] == 10000
    assert torch.bincount(ds.y_train).tolist()[:2] == [5923, 6742]  # MNIST's own class counts
    raw = tmp_path / "MNIST" / "raw"
    _write_mnist(raw)
    assert load_dataset("mnist", tmp_path).x_train.shape[0] < 60000  # files under the root win


def test_unknown_name():
    with pytest.raises(DataError, match="choose one of"):
        load_dataset("imagenet")
    assert "mnist-embedded" in DATASET_NAMES and "npz" in DATASET_NAMES


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_folder(tmp_path):
    batches = _cifar_batches()
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, (_, blob) in batches.items():
        (folder / name).write_bytes(blob)
    _check_cifar(load_dataset("cifar10", tmp_path), batches)
    _check_cifar(load_dataset("cifar10", folder), batches)


def test_cifar10_archive_warns_on_checksum(tmp_path):
    batches = _cifar_batches(protocol=4)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name in reversed(list(batches)):  # member order must not matter
            blob = batches[name][1]
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    with pytest.warns(DataWarning, match="checksum differs"):
        ds = load_dataset("cifar10", tmp_path)
    _check_cifar(ds, batches)
    with pytest.warns(DataWarning):
        _check_cifar(load_dataset("cifar10", archive), batches)


def test_cifar100_folder(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 6), ("test", 3)):
        d = {"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(range(90, 90 + n))}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)]}))
    ds = load_dataset("cifar100", tmp_path)
    assert ds.x_train.shape == (6, 3, 32, 32) and ds.num_classes == 100 and ds.classes[99] == "f99"
    assert ds.y_test.tolist() == [90, 91, 92]


def test_malicious_pickle_rejected(tmp_path):
    batches = _cifar_batches()
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, (_, blob) in batches.items():
        (folder / name).write_bytes(blob)
    marker = tmp_path / "pwned.txt"
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": _Evil(marker), "labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle") as err:
        load_dataset("cifar10", tmp_path)
    assert "data_batch_1" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_safe_pickle_load_allows_data_only():
    obj = {"a": np.arange(5, dtype=np.int64), "b": [1, 2.5, "s", b"x"], "c": np.float32(1.5), "d": {1, 2}}
    for proto in (2, 4, 5):
        out = safe_pickle_load(io.BytesIO(pickle.dumps(obj, protocol=proto)))
        assert np.array_equal(out["a"], obj["a"]) and out["b"] == obj["b"] and out["c"] == 1.5 and out["d"] == {1, 2}
    with pytest.raises(DataError, match="refusing to unpickle"):
        safe_pickle_load(io.BytesIO(pickle.dumps(_NotATensor())), name="x.pkl")


def test_safe_torch_load(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"x": torch.ones(2)}, good)
    assert torch.equal(safe_torch_load(good)["x"], torch.ones(2))
    bad = tmp_path / "bad.pt"
    torch.save(_NotATensor(), bad)
    with pytest.raises(DataError) as err:
        safe_torch_load(bad)
    assert "bad.pt" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="not found"):
        safe_torch_load(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- image folder


def _png(path, img):
    from torchvision.io import write_png

    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(img, str(path))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision's write_png (torchvision >= 0.29)
def test_imagefolder(tmp_path):
    imgs = {}
    for split, n in (("train", 2), ("test", 1)):
        for cls in ("b_cls", "a_cls"):
            for i in range(n):
                img = torch.from_numpy(RNG.integers(0, 256, (3, 5, 6), dtype=np.uint8))
                imgs[(split, cls, i)] = img
                _png(tmp_path / "rgb" / split / cls / f"{i}.png", img)
    ds = load_dataset("imagefolder", path=tmp_path / "rgb")
    assert ds.classes == ("a_cls", "b_cls") and ds.num_classes == 2
    assert ds.x_train.shape == (4, 3, 5, 6) and ds.x_test.shape == (2, 3, 5, 6)
    assert ds.y_train.tolist() == [0, 0, 1, 1] and ds.y_test.tolist() == [0, 1]
    assert torch.equal(ds.x_train[2], imgs[("train", "b_cls", 0)])
    assert len(ds.mean) == 3 and ds.augment == "none"

    gray = tmp_path / "gray"
    for split in ("train", "test"):
        _png(gray / split / "x" / "0.png", torch.zeros(1, 4, 4, dtype=torch.uint8))
    assert load_dataset("imagefolder", path=gray).x_train.shape == (1, 1, 4, 4)
    _png(gray / "train" / "y" / "0.png", torch.full((3, 4, 4), 7, dtype=torch.uint8))
    mixed = load_dataset("imagefolder", path=gray)
    assert mixed.x_train.shape == (2, 3, 4, 4) and mixed.x_test.shape == (1, 3, 4, 4)

    _png(gray / "test" / "y" / "odd.png", torch.zeros(3, 4, 5, dtype=torch.uint8))
    with pytest.raises(DataError, match="odd.png: image is 5x4"):
        load_dataset("imagefolder", path=gray)


# ----------------------------------------------------------------------------- npz


def test_npz_layouts(tmp_path):
    base = RNG.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    cases = {
        "nchw": (base, base),
        "nhwc": (base.transpose(0, 2, 3, 1), base),
        "float": (base.transpose(0, 2, 3, 1).astype(np.float32) / 255.0, base),
        "gray": (base[:, 0], base[:, :1]),
    }
    for name, (x, expected) in cases.items():
        np.savez(tmp_path / f"{name}.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
        ds = load_dataset("npz", path=tmp_path / f"{name}.npz")
        assert ds.x_train.dtype == torch.uint8 and np.array_equal(ds.x_train.numpy(), expected), name
        assert ds.y_train.dtype == torch.int64 and ds.num_classes == 3 and ds.classes == ("0", "1", "2")
        assert len(ds.mean) == expected.shape[1]

    np.savez(tmp_path / "nokey.npz", x_train=base, y_train=y)
    with pytest.raises(DataError, match="missing array"):
        load_dataset("npz", path=tmp_path / "nokey.npz")
    np.savez(tmp_path / "shape.npz", x_train=base[:, :, :, :, None], y_train=y, x_test=base, y_test=y)
    with pytest.raises(DataError, match="shape"):
        load_dataset("npz", path=tmp_path / "shape.npz")
    np.savez(tmp_path / "flab.npz", x_train=base, y_train=y.astype(np.float32), x_test=base, y_test=y)
    with pytest.raises(DataError, match="expected integers"):
        load_dataset("npz", path=tmp_path / "flab.npz")


def test_npz_zca_and_crop_flip(tmp_path):
    x = RNG.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8)
    y = np.arange(20) % 2
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])
    assert load_dataset("npz", path=tmp_path / "d.npz").augment == "crop_flip"  # CIFAR-like 3x32x32
    small = x[:, :, :6, :6]  # ZCA on 108 features keeps the test fast
    np.savez(tmp_path / "s.npz", x_train=small, y_train=y, x_test=small[:4], y_test=y[:4])
    ds = load_dataset("npz", path=tmp_path / "s.npz", zca=True)
    assert ds.whitened and ds.x_train.dtype == torch.float32 and ds.x_train.shape == (20, 3, 6, 6)
    assert ds.augment == "none"
    assert torch.allclose(ds.x_test, ds.x_train[:4], atol=1e-5)
    assert abs(ds.x_train.mean().item()) < 1e-4


# ----------------------------------------------------------------------------- ZCA


def test_zca_matches_kornia():
    kornia = pytest.importorskip("kornia")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 4, 4, generator=g)
    x[:, 1] = 0.5 * x[:, 0] + 0.5 * x[:, 1]  # correlated channels
    ref = kornia.enhance.ZCAWhitening(eps=0.1, compute_inv=True)
    ref.fit(x)
    z = ZCA.fit(x)
    torch.testing.assert_close(z(x), ref(x), atol=1e-4, rtol=0)
    torch.testing.assert_close(z(x[:5]), ref(x[:5]), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.inverse(z(x)), x, atol=1e-4, rtol=0)
    u8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(ZCA.fit(u8, chunk=7)(u8), ZCA.fit(u8.float() / 255)(u8.float() / 255), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- embedded


def test_embedded_mnist():
    ds = load_dataset("mnist-embedded", root="/ignored")
    assert ds.name == "mnist-embedded"
    assert ds.x_train.shape == (10000, 1, 28, 28) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (2000, 1, 28, 28) and ds.x_test.dtype == torch.uint8
    assert ds.y_train.dtype == torch.int64 and ds.num_classes == 10 and ds.classes == tuple("0123456789")
    assert torch.bincount(ds.y_train, minlength=10).tolist() == [1000] * 10
    assert torch.bincount(ds.y_test, minlength=10).tolist() == [200] * 10
    assert 0.1 < ds.x_train.float().mean().item() / 255 < 0.16  # real digits, not noise


def test_zca_is_fitted_once_per_training_set_and_read_from_the_cache_after(monkeypatch, tmp_path):
    from dpcore.data import zca as zca_mod

    monkeypatch.setenv("DPTUI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(zca_mod, "_FITTED", {})
    x = torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    first = zca_mod.ZCA.fit_cached(x)
    (saved,) = (tmp_path / "cache" / "zca").glob("*.pt")
    monkeypatch.setattr(zca_mod, "_FITTED", {})  # a new process: only the disk cache is left

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setattr(zca_mod.ZCA, "fit", classmethod(no_fit))
    again = zca_mod.ZCA.fit_cached(x)
    assert torch.equal(again.transform, first.transform) and torch.equal(again.mean, first.mean)
    assert zca_mod.ZCA.fit_cached(x) is again  # and this process keeps it
    other = x.clone()
    other[0, 0, 0, 0] ^= 1  # another training set: another key, fitted anew
    with pytest.raises(AssertionError, match="fitted again"):
        zca_mod.ZCA.fit_cached(other)
    assert saved.exists()
