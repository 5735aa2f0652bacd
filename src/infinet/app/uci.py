"""The UCI classification collection of Fernández-Delgado, Cernadas, Barro and Amorim 2014 ("Do we need hundreds
of classifiers to solve real world classification problems?", JMLR 15), in its preprocessed form.

Each data set is a folder ``<name>/`` holding

* ``<name>.txt``: metadata, one ``key= value`` a line (``n_entradas=`` features, ``n_clases=`` classes,
  ``fich1=`` the data file, ``n_patrons1=`` its examples; ``fich2=`` and ``n_patrons2=`` for the sets with a
  separate test file);
* the data file(s) ``<name>_R.dat`` (or ``<name>_train_R.dat`` and ``<name>_test_R.dat``): a header row, then
  one example a row, tab or space separated: a row number, the features (already standardized), the class
  as an integer 0..C-1;
* ``conxuntos.dat``: two rows of 0-based example indices, the training and validation split used to choose
  hyperparameters;
* ``conxuntos_kfold.dat``: eight rows, the training and test indices of each of 4 folds, for the reported
  accuracy.

Indices refer to the (first) data file. Arora, Du, Li, Salakhutdinov, Wang and Yu 2020 (ICLR, Sec. 5.1) keep
the 90 data sets with at most 5,000 examples and no separate test file: :func:`uci_collection` with its
defaults. Nothing is downloaded: users bring their own copy of the collection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data_errors import DatasetError

#: Arora et al.'s rule for which data sets to keep: at most this many examples in all ...
MAX_EXAMPLES = 5000


@dataclass(frozen=True)
class UCITask:
    """One data set of the collection. ``x``: (N, d) float64 features; ``y``: (N,) class indices;
    ``validation``: (training indices, validation indices) for choosing hyperparameters; ``folds``: the 4
    (training indices, test indices) pairs for the reported accuracy; ``x_test``/``y_test``: the separate
    test file of the sets that have one, else None; ``meta``: the metadata file's entries."""

    name: str
    x: np.ndarray
    y: np.ndarray
    n_classes: int
    validation: tuple[np.ndarray, np.ndarray]
    folds: tuple[tuple[np.ndarray, np.ndarray], ...]
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        """Examples in all (the data file and any separate test file): Arora et al.'s size."""
        return len(self.x) + (0 if self.x_test is None else len(self.x_test))

    @property
    def n_features(self) -> int:
        return self.x.shape[1]

    def __repr__(self) -> str:
        test = "" if self.x_test is None else f", separate test={len(self.x_test)}"
        return f"UCITask({self.name!r}, N={len(self.x)}, d={self.n_features}, classes={self.n_classes}{test})"


def read_metadata(path: Path) -> dict[str, str]:
    """The ``key= value`` lines of a data set's metadata file (keys without the '=')."""
    meta = {}
    for number, line in enumerate(_lines(path), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].endswith("="):
            raise DatasetError(f"{path}, line {number}: expected 'key= value', got {line.strip()!r}")
        meta[parts[0][:-1]] = parts[1]
    return meta


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read it ({e})") from None


def _meta_int(meta: dict, key: str, path: Path) -> int:
    if key not in meta:
        raise DatasetError(f"{path}: no '{key}=' entry")
    try:
        value = int(meta[key])
    except ValueError:
        raise DatasetError(f"{path}: '{key}=' must be an integer, got {meta[key]!r}") from None
    if value < 0:
        raise DatasetError(f"{path}: '{key}=' must be >= 0, got {value}")
    return value


def read_data(path: Path, n_features: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, d), classes (N,)) of a ``*_R.dat`` file: a header row, then rows of a row number,
    ``n_features`` numbers and an integer class in 0..n_classes-1."""
    lines = _lines(path)
    if not lines:
        raise DatasetError(f"{path}: empty file (expected a header row and examples)")
    rows, labels = [], []
    for number, line in enumerate(lines[1:], 2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != n_features + 2:
            raise DatasetError(f"{path}, line {number}: expected a row number, {n_features} features and a class "
                               f"({n_features + 2} fields), got {len(parts)}")
        try:
            values = [float(v) for v in parts[1:-1]]
            label = int(parts[-1])
        except ValueError:
            raise DatasetError(f"{path}, line {number}: non-numeric field in {line.strip()[:80]!r}") from None
        if not 0 <= label < n_classes:
            raise DatasetError(f"{path}, line {number}: class {label} outside 0..{n_classes - 1}")
        rows.append(values)
        labels.append(label)
    if not rows:
        raise DatasetError(f"{path}: no examples")
    x = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise DatasetError(f"{path}: features must be finite numbers (found NaN or inf)")
    return x, np.asarray(labels, dtype=np.int64)


def read_splits(path: Path, rows: int, n: int) -> list[np.ndarray]:
    """The ``rows`` rows of 0-based example indices (each within range(n)) of a split file."""
    lines = [line for line in _lines(path) if line.strip()]
    if len(lines) != rows:
        raise DatasetError(f"{path}: expected {rows} rows of example indices, got {len(lines)}")
    out = []
    for number, line in enumerate(lines, 1):
        try:
            idx = np.asarray([int(v) for v in line.split()], dtype=np.int64)
        except ValueError:
            raise DatasetError(f"{path}, row {number}: indices must be integers") from None
        if idx.size == 0:
            raise DatasetError(f"{path}, row {number}: no indices")
        if idx.min() < 0 or idx.max() >= n:
            raise DatasetError(f"{path}, row {number}: index {int(idx.max() if idx.max() >= n else idx.min())} "
                               f"outside 0..{n - 1}")
        out.append(idx)
    return out


def read_uci(folder: str | os.PathLike) -> UCITask:
    """One data set of the collection from its folder (see the module docstring for the format); raises
    :class:`~infinet.datasets.DatasetError` naming the file and line of anything missing or malformed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder (a UCI data set is a folder <name>/ with <name>.txt)")
    name = folder.name
    meta_path = folder / f"{name}.txt"
    meta = read_metadata(meta_path)
    d, c = _meta_int(meta, "n_entradas", meta_path), _meta_int(meta, "n_clases", meta_path)
    if d < 1 or c < 2:
        raise DatasetError(f"{meta_path}: needs at least 1 feature and 2 classes, got {d} and {c}")
    if "fich1" not in meta:
        raise DatasetError(f"{meta_path}: no 'fich1=' entry naming the data file")
    x, y = read_data(folder / meta["fich1"], d, c)
    expected = _meta_int(meta, "n_patrons1", meta_path)
    if len(x) != expected:
        raise DatasetError(f"{folder / meta['fich1']}: {len(x)} examples, but {meta_path.name} says n_patrons1= {expected}")
    x_test = y_test = None
    if "fich2" in meta:
        x_test, y_test = read_data(folder / meta["fich2"], d, c)
    train, val = read_splits(folder / "conxuntos.dat", 2, len(x))
    kfold = read_splits(folder / "conxuntos_kfold.dat", 8, len(x))
    folds = tuple((kfold[2 * i], kfold[2 * i + 1]) for i in range(4))
    return UCITask(name, x, y, c, (train, val), folds, x_test, y_test, meta)


def uci_collection(directory: str | os.PathLike, max_examples: int | None = MAX_EXAMPLES,
                   separate_test: bool = False) -> list[str]:
    """Names of the data sets in ``directory`` (sorted folders holding ``<name>/<name>.txt``), keeping, as
    Arora et al. 2020 do, those with at most ``max_examples`` examples in all (None: every size) and, unless
    ``separate_test``, none with a separate test file: 90 of the 121 with the defaults. Reads only the
    metadata files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"{directory}: no such folder (expected the UCI collection, one folder per data set)")
    names = []
    for entry in sorted(os.listdir(directory)):
        meta_path = directory / entry / f"{entry}.txt"
        if not meta_path.is_file():
            continue
        meta = read_metadata(meta_path)
        n_test = _meta_int(meta, "n_patrons2", meta_path) if "n_patrons2" in meta else 0
        total = _meta_int(meta, "n_patrons1", meta_path) + n_test
        if (max_examples is not None and total > max_examples) or (n_test > 0 and not separate_test):
            continue
        names.append(entry)
    if not names:
        raise DatasetError(f"{directory}: no UCI data sets found (folders <name>/ with <name>.txt)")
    return names


__all__ = ["MAX_EXAMPLES", "UCITask", "read_uci", "uci_collection"]
