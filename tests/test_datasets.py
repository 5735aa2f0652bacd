"""Data loaders: built-in data sets from installed files, user-folder formats from files written here."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from infinet import datasets as D
from infinet.datasets import DatasetError, load


def check_preprocessed(ds, n_train, n_test):
    assert len(ds.x_train) == n_train and len(ds.x_test) == n_test
    d = ds.x_train[0].numel()
    for x in (ds.x_train, ds.x_test):
        assert x.dtype == torch.float64
        norms = x.flatten(1).pow(2).sum(1)
        assert torch.allclose(norms, torch.full_like(norms, float(d)), rtol=1e-12)
    if ds.task == "classification":
        c = ds.n_classes
        assert ds.y_train.shape == (n_train, c)
        assert torch.allclose(ds.y_train.sum(1), torch.zeros(n_train, dtype=torch.float64), atol=1e-12)
        assert torch.equal(ds.y_train.argmax(1), ds.labels_train)
        assert set(ds.y_train.unique().tolist()) == {-1.0 / c, 1.0 - 1.0 / c}


@pytest.mark.parametrize("name,shape,classes", [
    ("digits", (1, 8, 8), 10), ("breast_cancer", (30,), 2), ("mnist5k", (1, 28, 28), 10), ("mnist1d", (1, 40), 10),
])
def test_builtin_classification(name, shape, classes):
    ds = load(name, n_train=200, n_test=100, seed=3)
    assert ds.input_shape == shape and ds.n_classes == classes and ds.task == "classification"
    check_preprocessed(ds, 200, 100)
    # stratified: class proportions of the sample follow the pool within one example per class
    counts = torch.bincount(ds.labels_train, minlength=classes).double() / 200
    full = load(name, seed=3)
    pool = torch.bincount(full.labels_train, minlength=classes).double() / len(full.labels_train)
    assert (counts - pool).abs().max() <= 1.0 / 200 + 1e-12


def test_mnist5k_reads_the_real_file():
    path = D.mnist5k_path()
    assert path.name == "mnist_5k.csv.gz" and path.stat().st_size > 1_000_000
    ds = load("mnist5k", standardize_inputs=False, sphere=False, n_train=4000, n_test=1000)
    assert ds.x_train.min() >= 0 and ds.x_train.max() == 255
    assert sorted(set(ds.labels_train.tolist())) == list(range(10))


def test_diabetes_regression():
    ds = load("diabetes", n_train=300, n_test=100)
    assert ds.task == "regression" and ds.classes is None and ds.labels_train is None
    assert ds.y_train.shape == (300, 1)
    assert abs(float(ds.y_train.mean())) < 1e-12 and abs(float(ds.y_train.std(unbiased=False)) - 1) < 1e-12
    check_preprocessed(ds, 300, 100)


def test_same_seed_same_split_other_seed_other_split():
    a, b, c = load("digits", n_train=100, n_test=50, seed=1), load("digits", n_train=100, n_test=50, seed=1), \
        load("digits", n_train=100, n_test=50, seed=2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_default_split_and_flat():
    ds = load("digits")
    assert len(ds.x_train) + len(ds.x_test) == 1797 and len(ds.x_test) == round(0.2 * 1797)
    assert ds.flat().input_shape == (64,)
    assert load("digits", flatten=True, n_train=10, n_test=10).input_shape == (64,)


def test_mnist1d_leaves_global_rng_alone():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    load("mnist1d", n_train=50, n_test=50)
    assert np.array_equal(np.random.get_state()[1], before)


def test_standardize_uses_training_statistics():
    rng = np.random.default_rng(0)
    tr, te = rng.normal(3, 2, (50, 4)), rng.normal(3, 2, (20, 4))
    s_tr, s_te = D.standardize(tr, te)
    assert np.allclose(s_tr.mean(0), 0) and np.allclose(s_tr.std(0), 1)
    assert np.allclose(s_te, (te - tr.mean(0)) / tr.std(0))
    img = rng.normal(1, 3, (10, 3, 4, 4))
    (s_img,) = D.standardize(img)
    assert np.allclose(s_img.mean(axis=(0, 2, 3)), 0) and np.allclose(s_img.std(axis=(0, 2, 3)), 1)


def test_size_errors():
    with pytest.raises(DatasetError, match="only 569"):
        load("breast_cancer", n_train=500, n_test=200)
    with pytest.raises(DatasetError, match="n_train must be a positive integer"):
        load("digits", n_train=0)
    with pytest.raises(DatasetError, match="stratified"):
        load("digits", n_train=100, n_test=3)  # fewer test examples than classes
    with pytest.raises(DatasetError, match="unknown data set 'cifar100'"):
        load("cifar100")
    with pytest.raises(DatasetError, match="task must be one of"):
        load("digits", task="ranking")


# ---- user-folder formats, written here ---------------------------------------------------------
def write_idx(path, array, compress=False):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def make_idx_folder(folder, n_train=40, n_test=20, compress=False, seed=0):
    rng = np.random.default_rng(seed)
    sfx = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}", np.arange(n, dtype=np.uint8) % 10, compress)
    return folder


@pytest.mark.parametrize("compress", [False, True])
def test_idx_folder(tmp_path, compress):
    make_idx_folder(tmp_path, compress=compress)
    raw = D.read_idx(tmp_path / ("train-labels-idx1-ubyte" + (".gz" if compress else "")))
    assert raw.tolist() == [i % 10 for i in range(40)]
    ds = load(f"mnist:{tmp_path}", n_train=20, n_test=10)
    assert ds.input_shape == (1, 28, 28) and ds.n_classes == 10
    check_preprocessed(ds, 20, 10)
    full = load(f"fashion_mnist:{tmp_path}", standardize_inputs=False, sphere=False)
    assert len(full.x_train) == 40 and len(full.x_test) == 20


def test_idx_errors(tmp_path):
    with pytest.raises(DatasetError, match="needs a folder"):
        load("mnist")
    with pytest.raises(DatasetError, match="expected a file named train-images-idx3-ubyte"):
        load(f"mnist:{tmp_path}")
    make_idx_folder(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")  # 3 bytes for 5
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte: IDX header promises"):
        load(f"mnist:{tmp_path}")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DatasetError, match="not an IDX file"):
        load(f"mnist:{tmp_path}")
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8))  # 40 images, 7 labels
    with pytest.raises(DatasetError, match="do not match"):
        load(f"mnist:{tmp_path}")
    with pytest.raises(DatasetError, match="not a folder"):
        load(f"mnist:{tmp_path / 'missing'}")


@pytest.mark.skipif(not D.FASHION_MNIST_DEBIAN.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_location():
    ds = load("fashion_mnist", n_train=500, n_test=200)
    assert ds.input_shape == (1, 28, 28) and ds.n_classes == 10
    check_preprocessed(ds, 500, 200)


def make_cifar_folder(folder, protocol=2, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    for name, n in (("data_batch_1", 30), ("data_batch_2", 30), ("test_batch", 20)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f, protocol=protocol)
    return folder


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10(tmp_path, protocol):
    folder = make_cifar_folder(tmp_path / "cifar-10-batches-py", protocol)
    ds = load(f"cifar10:{tmp_path}", standardize_inputs=False, sphere=False)
    assert ds.input_shape == (3, 32, 32) and len(ds.x_train) == 60 and len(ds.x_test) == 20
    assert ds.classes[3] == "class3"
    # NCHW: channel c of image i is bytes [1024 c, 1024 (c + 1)) of its row, row-major
    with open(folder / "test_batch", "rb") as f:
        first = pickle.load(f)[b"data"]
    assert any(torch.equal(ds.x_test[i, 1, 0], torch.tensor(first[k, 1024:1056], dtype=torch.float64))
               for i in range(20) for k in range(20))
    check_preprocessed(load(f"cifar10:{folder}", n_train=20, n_test=10), 20, 10)


class Evil:
    def __reduce__(self):
        return (print, ("owned",))


def test_cifar_refuses_code_in_pickles(tmp_path):
    folder = make_cifar_folder(tmp_path)
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(DatasetError, match="refusing to load builtins.print"):
        load(f"cifar10:{folder}")
    (folder / "test_batch").unlink()
    with pytest.raises(DatasetError, match="test_batch"):
        load(f"cifar10:{folder}")
    with pytest.raises(DatasetError, match="needs a folder"):
        load("cifar10")


def test_npz_layouts_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)), np.arange(60) % 3
    np.savez(tmp_path / "a.npz", x=x, y=y)
    ds = load(str(tmp_path / "a.npz"), n_train=30, n_test=15)
    assert ds.n_classes == 3 and ds.input_shape == (5,)
    check_preprocessed(ds, 30, 15)
    np.savez(tmp_path / "b.npz", x_train=x[:40], y_train=rng.normal(size=40), x_test=x[40:], y_test=rng.normal(size=20))
    ds = load(str(tmp_path / "b.npz"))
    assert ds.task == "regression" and len(ds.x_train) == 40 and len(ds.x_test) == 20
    np.savez(tmp_path / "c.npz", inputs=x)
    with pytest.raises(DatasetError, match=r"c.npz: expected arrays 'x' and 'y'.*\['inputs'\]"):
        load(str(tmp_path / "c.npz"))
    (tmp_path / "d.npz").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="d.npz: cannot read .npz"):
        load(str(tmp_path / "d.npz"))
    with pytest.raises(DatasetError, match="no such file"):
        load(str(tmp_path / "missing.npz"))
    x[3, 2] = np.nan
    np.savez(tmp_path / "e.npz", x=x, y=y)
    with pytest.raises(DatasetError, match="NaN"):
        load(str(tmp_path / "e.npz"))


def test_csv(tmp_path):
    rng = np.random.default_rng(1)
    rows = np.column_stack([rng.normal(size=(40, 3)), np.arange(40) % 2])
    np.savetxt(tmp_path / "h.csv", rows, delimiter=",", header="a,b,c,label", comments="")
    np.savetxt(tmp_path / "n.csv", rows, delimiter=",")
    for name in ("h.csv", "n.csv"):
        ds = load(str(tmp_path / name), n_train=20, n_test=10)
        assert ds.task == "classification" and ds.input_shape == (3,)
    reg = np.column_stack([rng.normal(size=(40, 3)), rng.normal(size=40)])
    np.savetxt(tmp_path / "r.csv", reg, delimiter=",")
    assert load(str(tmp_path / "r.csv")).task == "regression"
    assert load(str(tmp_path / "n.csv"), task="regression").task == "regression"
    (tmp_path / "bad.csv").write_text("1,2,3\n4,five,6\n")
    with pytest.raises(DatasetError, match="bad.csv: expected a numeric CSV"):
        load(str(tmp_path / "bad.csv"))
    (tmp_path / "empty.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match="empty.csv"):
        load(str(tmp_path / "empty.csv"))
    (tmp_path / "one.csv").write_text("1\n2\n3\n")
    with pytest.raises(DatasetError, match="at least two columns"):
        load(str(tmp_path / "one.csv"))
    with pytest.raises(DatasetError, match="integer class labels"):
        load(str(tmp_path / "r.csv"), task="classification")
