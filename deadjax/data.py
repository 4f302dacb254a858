"""Datasets as standardised NumPy arrays, the probe batch, and batching by key.

Datasets (``config.data.name``):

* ``mnist1d`` -- MNIST-1D (Greydanus, 2020; Greydanus & Kobak, 2024), generated
  offline with the ``mnist1d`` package's ``make_dataset`` and its standard
  arguments (``get_dataset_args()``: 5000 samples, 80/20 split, 40 features,
  10 classes, seed 42), so the data are the published dataset: 4000 training
  and 1000 test examples. Nothing is downloaded and nothing is unpickled.
* ``random`` -- the founding experiment: inputs ``x ~ U[0, 1)`` with
  ``data.num_features`` features, labels uniform over ``data.num_classes``;
  ``data.num_train`` training and ``data.num_test`` test examples, drawn from
  ``np.random.default_rng(data.seed)``.
* ``slowly_changing_regression`` -- Dohare et al.'s stream (2021; 2024,
  Nature), :mod:`deadjax.tasks`: ``data.num_features`` input bits ``m``, of
  which the first ``data.flipping_bits`` flip one at a time every
  ``data.task_every`` steps, targets from a fixed random teacher network.
  Training batches are fresh draws inside the program; the stored splits
  (``data.num_train`` and ``data.num_test`` examples of task 0) are the
  evaluation samples, which the program gives each task's flipping bits and
  targets. Targets are float32 and ``num_classes`` is 1 (one output); the
  bits are never standardised.
* ``mnist`` and ``fashion_mnist`` -- read from local files in ``data.path``,
  in either distribution format: the four IDX files (gzip or uncompressed) or
  the Keras ``.npz`` archive (see :data:`IDX_FILES`, :data:`NPZ_FILES`).
  Pixels are scaled to [0, 1] and flattened to 784 features.
* ``cifar10`` -- CIFAR-10 (Krizhevsky, 2009, "Learning Multiple Layers of
  Features from Tiny Images"), the *binary* distribution
  (``cifar-10-binary.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html,
  extracted) in ``data.path`` or its subfolder ``cifar-10-batches-bin``:
  ``data_batch_1.bin`` .. ``data_batch_5.bin`` (training, in that order) and
  ``test_batch.bin``. Each record is 3073 bytes, one label byte (0..9) and
  3072 pixel bytes: the 32x32 red channel row by row, then green, then blue.
  The pixels are kept in that order as 3072 features, scaled to [0, 1]. The
  Python version (``cifar-10-batches-py``) is pickled and is never read.
* ``arrays`` -- the researcher's own classification data in one file,
  ``data.path``: a ``.npz`` archive with ``x_train``, ``y_train`` and
  optionally ``x_test``, ``y_test`` (inputs of any shape ``(N, ...)``,
  flattened), or a table (``.csv``, ``.parquet``/``.pq``) whose column
  ``data.label_column`` holds the labels and whose other numeric columns are
  the features, in file order. Labels are class indices: integers ``>= 0``,
  with ``num_classes = max label + 1`` over train and test (a class may have
  no example). Without a test split in the file, ``floor(data.test_fraction
  * N)`` examples are held out as the test set (:func:`holdout_indices`).

Every dataset goes through the same two steps (:func:`load`):

1. **Validation split.** ``floor(data.val_fraction * N)`` training examples are
   held out: the indices ``0..N-1`` are shuffled with
   ``np.random.default_rng(data.seed)`` and the first ``floor(f * N)`` are the
   validation set. Both parts keep the original order of the examples, so
   ``val_fraction = 0`` leaves the published training set as it was.
2. **Standardisation** (``data.standardize``, default on): per feature,
   ``(x - mean) / std`` with the mean and (population, ``ddof = 0``) standard
   deviation of the *post-split training set only*, applied to every split.
   A feature whose training std is below ``STD_EPSILON`` (a constant feature,
   e.g. an MNIST border pixel) gets std 1, so it is only centred.

The probe batch (:func:`probe_indices`, :func:`probe_batch`) is the fixed set of
training inputs that the diagnostics are taken on (DESIGN.md, "When and on what
diagnostics are taken"): it depends only on the data config and ``data.seed``.
The sharpness diagnostic's loss is taken on the whole training set under full
batch and otherwise on another fixed draw (:func:`sharpness_indices`), which
the program gathers from the training split it already holds.

:func:`batch_indices` chooses a member's minibatch at a step as a pure function
of the step and the member's key, so it runs inside ``jit``/``scan``/``vmap``
and a resumed run sees exactly the batches it would have seen.

Data files are data, never code: ``.npz`` files are opened with
``allow_pickle=False``, IDX files are parsed from their header, CIFAR-10
batches are read as raw bytes, CSV and parquet files through pandas, and
sizes, shapes, dtypes, non-finite values and label ranges are checked before
use; every problem stops with one :class:`ConfigError` sentence naming the
file. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import math
import os
import random as _py_random
import threading
import warnings
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from deadjax import tasks
from deadjax.errors import ConfigError

# Datasets whose targets are real numbers (train.loss = "mse").
REGRESSION_DATASETS = ("slowly_changing_regression",)
REGRESSION = REGRESSION_DATASETS
# Datasets read from local files: data.path is required.
FILE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "arrays")
DATASETS = ("mnist1d", "random") + FILE_DATASETS + REGRESSION
ORDERS = ("shuffle", "sequential", "shared")

# A training std below this counts as a constant feature: it is divided by 1.
STD_EPSILON = 1e-6

# The constant that separates the probe batch's random stream from data.seed.
_PROBE_STREAM = 0x70726F62   # "prob"
# ... and the sharpness batch's (diagnostics.sharpness_batch).
_SHARPNESS_STREAM = 0x73687270   # "shrp"

# Accepted file names for mnist / fashion_mnist (both datasets use the same IDX
# names, so each dataset needs its own folder, or one of SUBFOLDERS below).
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
NPZ_FILES = {
    "mnist": ("mnist.npz",),
    "fashion_mnist": ("fashion-mnist.npz", "fashion_mnist.npz"),
}
SUBFOLDERS = {
    "mnist": ("mnist", "MNIST", os.path.join("MNIST", "raw")),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST",
                      os.path.join("FashionMNIST", "raw")),
}
_IMAGE_SHAPE = (28, 28)
_NUM_CLASSES_IMAGES = 10
_MAX_IDX_BYTES = 2 ** 31  # refuse headers that announce absurd sizes

# CIFAR-10, binary version: the batch files and their 3073-byte records.
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"
CIFAR10_PIXELS = 3 * 32 * 32
CIFAR10_RECORD = 1 + CIFAR10_PIXELS
CIFAR10_CLASSES = 10

# File suffixes of data.name = "arrays" and the format each one is read as.
ARRAYS_FORMATS = {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}

# The constant that separates the test hold-out's random stream from data.seed.
_TEST_STREAM = 0x74657374    # "test"


# --------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One dataset's splits as read-only NumPy arrays.

    Inputs are float32 ``(N, F)``, standardised with the training statistics
    ``mean`` and ``std`` (float32 ``(F,)``; 0 and 1 when ``data.standardize``
    is off); labels are int32 ``(N,)`` in ``[0, num_classes)`` (a regression
    dataset: float32 targets and ``num_classes = 1``, its one output). An empty
    validation set has shape ``(0, F)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: np.ndarray
    std: np.ndarray
    name: str

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    def splits(self) -> dict[str, np.ndarray]:
        """``{"x_train", "y_train", "x_val", "y_val", "x_test", "y_test"}``."""
        return {k: getattr(self, k) for k in
                ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}


def _data_section(config):
    """``config.data`` of a full config; a data section is accepted as is."""
    try:
        if "data" in config:
            return config.data
    except TypeError:
        pass
    return config


def _cache_key(d) -> tuple:
    name = d.name
    key: tuple = (name, int(d.seed), float(d.val_fraction), bool(d.standardize))
    if name == "random":
        key += (int(d.num_train), int(d.num_test), int(d.num_features),
                int(d.num_classes))
    elif name in REGRESSION:
        key += (int(d.num_train), int(d.num_test), int(d.num_features),
                int(d.flipping_bits))
    elif name in FILE_DATASETS:
        key += (_abspath(d.path), _signature(data_files(d)))
        if name == "arrays":
            key += (str(d.label_column), float(d.test_fraction))
    return key


def _abspath(path) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))


def _signature(files) -> tuple:
    """``(path, mtime_ns, size)`` of each file: a file rewritten in place is
    read again instead of served from the cache."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            out.append((f, None, None))   # the loader names what is wrong
        else:
            out.append((f, st.st_mtime_ns, st.st_size))
    return tuple(out)


def data_files(config) -> tuple[str, ...]:
    """The files a file dataset of ``config`` reads (ConfigError naming the
    folder and the accepted names if they are not there); ``()`` for the
    generated datasets."""
    d = _data_section(config)
    if d.name in ("mnist", "fashion_mnist"):
        return tuple(find_files(d.name, d.path)[1].values())
    if d.name == "cifar10":
        train, test = find_cifar10(d.path)
        return train + (test,)
    if d.name == "arrays":
        return (arrays_file(d.path)[0],)
    return ()


_CACHE: dict[tuple, Dataset] = {}
_CACHE_LOCK = threading.Lock()
_MNIST1D_RAW: dict[str, np.ndarray] | None = None


def clear_cache() -> None:
    """Forgets every loaded dataset (and the generated MNIST-1D arrays)."""
    global _MNIST1D_RAW
    with _CACHE_LOCK:
        _CACHE.clear()
        _MNIST1D_RAW = None


def load(config) -> Dataset:
    """The dataset of ``config`` (a full config or its ``data`` section).

    Cached in-process on the data fields that define it (``data.name``,
    ``data.seed``, ``data.val_fraction``, ``data.standardize``, and
    ``data.path`` or the synthetic sizes where they apply; for ``arrays`` also
    ``data.label_column`` and ``data.test_fraction``), so every group of a
    sweep shares one copy. For datasets read from files the key holds each
    file's modification time and size too, so a file rewritten in place is
    read again. The arrays are read-only.
    """
    d = _data_section(config)
    if d.name not in DATASETS:
        raise ConfigError(f"data.name = {d.name!r} is not allowed; choose one of "
                          f"{', '.join(repr(n) for n in DATASETS)}.")
    key = _cache_key(d)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    ds = _build(d)
    with _CACHE_LOCK:
        _CACHE[key] = ds
    return ds


def load_dataset(config) -> dict[str, np.ndarray]:
    """Public API: the NumPy splits ``x_train, y_train, x_val, y_val, x_test, y_test``.

    Inputs are standardised exactly as the network sees them. The arrays are
    the cached, read-only ones; copy them to modify.
    """
    return load(config).splits()


def _build(d) -> Dataset:
    if d.name == "mnist1d":
        raw = _mnist1d_raw()
        x, y, x_test, y_test = raw["x"], raw["y"], raw["x_test"], raw["y_test"]
        num_classes = 10
    elif d.name == "random":
        x, y, x_test, y_test = _random_raw(d)
        num_classes = int(d.num_classes)
    elif d.name in REGRESSION:
        x, y, x_test, y_test = _regression_raw(d)
        num_classes = 1
    elif d.name == "cifar10":
        x, y, x_test, y_test = _load_cifar10(d)
        num_classes = CIFAR10_CLASSES
    elif d.name == "arrays":
        x, y, x_test, y_test, num_classes = _load_arrays(d)
    else:
        x, y, x_test, y_test = _load_image_files(d)
        num_classes = _NUM_CLASSES_IMAGES

    val_idx, train_idx = split_indices(len(y), float(d.val_fraction), int(d.seed))
    x_tr, y_tr = x[train_idx], y[train_idx]
    x_va, y_va = x[val_idx], y[val_idx]

    num_features = x.shape[1]
    if bool(d.standardize) and d.name not in REGRESSION:
        mean, std = _train_stats(x_tr)
    else:
        mean = np.zeros(num_features, np.float64)
        std = np.ones(num_features, np.float64)

    def finish(a: np.ndarray) -> np.ndarray:
        out = _standardise(a, mean, std)
        out.setflags(write=False)
        return out

    def labels(a: np.ndarray) -> np.ndarray:
        out = np.ascontiguousarray(a, dtype=np.float32 if d.name in REGRESSION else np.int32)
        out.setflags(write=False)
        return out

    mean32 = mean.astype(np.float32)
    std32 = std.astype(np.float32)
    mean32.setflags(write=False)
    std32.setflags(write=False)
    return Dataset(
        x_train=finish(x_tr), y_train=labels(y_tr),
        x_val=finish(x_va), y_val=labels(y_va),
        x_test=finish(x_test), y_test=labels(y_test),
        num_classes=num_classes, mean=mean32, std=std32, name=str(d.name))


def regression_teacher(config) -> dict:
    """The slowly-changing regression's teacher network of ``config``'s
    ``data.seed`` and ``data.num_features`` (:func:`deadjax.tasks.regression_teacher`)."""
    d = _data_section(config)
    key = tasks.task_key(int(d.seed), "slowly_changing_regression")
    return tasks.regression_teacher(key, int(d.num_features))


_TRAIN_SAMPLE_STREAM = 0x74726E73  # "trns"
_TEST_SAMPLE_STREAM = 0x74737473   # "tsts"


def _regression_raw(d):
    """Task-0 samples of the slowly-changing regression: ``data.num_train`` and
    ``data.num_test`` examples of the ``m`` input bits and their targets."""
    key = tasks.task_key(int(d.seed), "slowly_changing_regression")
    teacher = regression_teacher(d)
    out = []
    for n, stream in ((int(d.num_train), _TRAIN_SAMPLE_STREAM),
                      (int(d.num_test), _TEST_SAMPLE_STREAM)):
        x, y = tasks.regression_batch(key, teacher, jax.random.fold_in(key, stream), 0, n,
                                      int(d.flipping_bits))
        out += [np.asarray(x)[:, :-1], np.asarray(y)]
    return tuple(out)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(val, train)`` indices into ``n`` training examples, each sorted.

    The indices are shuffled with ``np.random.default_rng(seed)``; the first
    ``floor(val_fraction * n)`` are the validation set.
    """
    num_val = int(math.floor(val_fraction * n))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:num_val]), np.sort(perm[num_val:])


_CHUNK = 8192


def _train_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population std in float64 (std < eps -> 1)."""
    n, f = x.shape
    if n == 0:
        return np.zeros(f), np.ones(f)
    total = np.zeros(f)
    for i in range(0, n, _CHUNK):
        total += x[i:i + _CHUNK].sum(axis=0, dtype=np.float64)
    mean = total / n
    sq = np.zeros(f)
    for i in range(0, n, _CHUNK):
        diff = x[i:i + _CHUNK].astype(np.float64) - mean
        sq += np.einsum("ij,ij->j", diff, diff)
    std = np.sqrt(sq / n)
    std = np.where(std < STD_EPSILON, 1.0, std)
    return mean, std


def _standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape, np.float32)
    for i in range(0, x.shape[0], _CHUNK):
        out[i:i + _CHUNK] = (x[i:i + _CHUNK].astype(np.float64) - mean) / std
    return out


# --------------------------------------------------------------------------
# MNIST-1D and the random dataset
# --------------------------------------------------------------------------

def _generate_mnist1d() -> dict[str, np.ndarray]:
    """MNIST-1D from ``mnist1d.data.make_dataset`` with its standard arguments.

    ``make_dataset`` seeds NumPy's and Python's global generators; their states
    are restored afterwards so that generation has no side effect. It makes no
    network access (``get_dataset`` would download a pickle; it is not used).
    """
    np_state = np.random.get_state()
    py_state = _py_random.getstate()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from mnist1d.data import get_dataset_args, make_dataset
            raw = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        _py_random.setstate(py_state)
    out = {
        "x": np.asarray(raw["x"], np.float64),
        "y": np.asarray(raw["y"], np.int64),
        "x_test": np.asarray(raw["x_test"], np.float64),
        "y_test": np.asarray(raw["y_test"], np.int64),
    }
    if (out["x"].shape != (4000, 40) or out["x_test"].shape != (1000, 40)
            or out["y"].shape != (4000,) or out["y_test"].shape != (1000,)):
        raise RuntimeError("mnist1d.make_dataset returned unexpected shapes "
                           f"{ {k: v.shape for k, v in out.items()} }; expected the "
                           "standard 4000/1000 examples of 40 features.")
    return out


def _mnist1d_raw() -> dict[str, np.ndarray]:
    global _MNIST1D_RAW
    with _CACHE_LOCK:
        raw = _MNIST1D_RAW
    if raw is None:
        raw = _generate_mnist1d()
        with _CACHE_LOCK:
            _MNIST1D_RAW = raw
    return raw


def _random_raw(d):
    rng = np.random.default_rng(int(d.seed))
    f, c = int(d.num_features), int(d.num_classes)
    x = rng.random((int(d.num_train), f), dtype=np.float32)
    y = rng.integers(0, c, size=int(d.num_train))
    x_test = rng.random((int(d.num_test), f), dtype=np.float32)
    y_test = rng.integers(0, c, size=int(d.num_test))
    return x, y, x_test, y_test


# --------------------------------------------------------------------------
# MNIST and Fashion-MNIST from local files
# --------------------------------------------------------------------------

def accepted_files(name: str) -> str:
    """A sentence fragment listing the file names accepted for ``name``."""
    idx = ", ".join(f"{v}[.gz]" for v in IDX_FILES.values())
    npz = " or ".join(NPZ_FILES[name])
    subs = ", ".join(SUBFOLDERS[name])
    return (f"the four IDX files ({idx}) or the Keras archive {npz}, directly in "
            f"data.path or in a subfolder named one of {subs}")


def path_wanted(name: str) -> str:
    """What ``data.path`` must be for the file dataset ``name``, as a sentence fragment."""
    if name == "arrays":
        return "the file: " + _arrays_wanted()
    if name == "cifar10":
        return "the folder that holds " + cifar10_files_sentence()
    return "the folder that holds " + accepted_files(name)


def find_files(name: str, path: str) -> tuple[str, dict[str, str]]:
    """``("idx", {split: file})`` or ``("npz", {"npz": file})`` for ``name`` in ``path``.

    Looks in the dataset's subfolders first (so one ``data.path`` can hold
    both datasets), then in ``path`` itself; in each folder the IDX files come
    before the ``.npz`` archive, and an uncompressed IDX file before its
    ``.gz``. Raises ConfigError naming the folder and the accepted files.
    """
    root = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isdir(root):
        raise ConfigError(f"data.path = {str(path)!r} is not an existing folder; for "
                          f"data.name = {name!r} it must hold {accepted_files(name)}.")
    folders = [os.path.join(root, s) for s in SUBFOLDERS[name]] + [root]
    partial: tuple[str, list[str]] | None = None
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        found, missing = {}, []
        for split, base in IDX_FILES.items():
            for candidate in (base, base + ".gz"):
                full = os.path.join(folder, candidate)
                if os.path.isfile(full):
                    found[split] = full
                    break
            else:
                missing.append(base + "[.gz]")
        if not missing:
            return "idx", found
        for npz in NPZ_FILES[name]:
            full = os.path.join(folder, npz)
            if os.path.isfile(full):
                return "npz", {"npz": full}
        if found and partial is None:
            partial = (folder, missing)
    if partial is not None:
        raise ConfigError(f"data.path = {str(path)!r}: the folder {partial[0]} has only "
                          f"some of the {name} IDX files (missing "
                          f"{', '.join(partial[1])}); it must hold {accepted_files(name)}.")
    raise ConfigError(f"data.path = {str(path)!r} holds no {name} files; it must hold "
                      f"{accepted_files(name)}.")


def _load_image_files(d):
    kind, files = find_files(d.name, d.path)
    if kind == "idx":
        x = read_idx(files["x_train"], ndim=3)
        y = read_idx(files["y_train"], ndim=1)
        x_test = read_idx(files["x_test"], ndim=3)
        y_test = read_idx(files["y_test"], ndim=1)
        names = (files["x_train"], files["y_train"], files["x_test"], files["y_test"])
    else:
        x, y, x_test, y_test = read_keras_npz(files["npz"])
        names = (files["npz"],) * 4
    for arr, lab, fx, fy in ((x, y, names[0], names[1]),
                             (x_test, y_test, names[2], names[3])):
        if arr.shape[1:] != _IMAGE_SHAPE:
            raise ConfigError(f"The file {fx} holds images of shape "
                              f"{arr.shape[1:]}, not {_IMAGE_SHAPE}; it is not "
                              f"{d.name} data.")
        if arr.shape[0] != lab.shape[0]:
            raise ConfigError(f"The files {fx} and {fy} disagree: {arr.shape[0]} "
                              f"images but {lab.shape[0]} labels.")
        if lab.size and (lab.min() < 0 or lab.max() >= _NUM_CLASSES_IMAGES):
            raise ConfigError(f"The file {fy} has labels outside 0..9 "
                              f"(min {lab.min()}, max {lab.max()}); it is corrupt.")
        if arr.shape[0] == 0:
            raise ConfigError(f"The file {fx} holds no images.")

    def pixels(a):
        return (a.reshape(a.shape[0], -1).astype(np.float32) / np.float32(255.0))

    return pixels(x), y.astype(np.int64), pixels(x_test), y_test.astype(np.int64)


def _open(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _read_exact(f, n: int, path: str, what: str) -> bytes:
    try:
        buf = f.read(n)
    except (OSError, EOFError, zlib.error) as e:  # bad or truncated gzip
        raise ConfigError(f"The file {path} is corrupt ({type(e).__name__}: {e}); "
                          "download it again.") from None
    if len(buf) != n:
        raise ConfigError(f"The file {path} is truncated: it ends after "
                          f"{len(buf)} of the {n} bytes of its {what}; download it again.")
    return buf


def read_idx(path: str, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (LeCun et al.'s MNIST format) with ``ndim`` dims.

    The header is two zero bytes, the type code 0x08 (unsigned byte), the
    number of dimensions, then each dimension as a big-endian int32; the data
    must have exactly the announced size. Raises ConfigError naming the file.
    """
    with _open(path) as f:
        head = _read_exact(f, 4, path, "header")
        if head[0] != 0 or head[1] != 0 or head[2] != 0x08 or head[3] != ndim:
            magic = int.from_bytes(head, "big")
            raise ConfigError(
                f"The file {path} is not an IDX file of unsigned bytes with {ndim} "
                f"dimensions (magic number 0x{magic:08x}, expected "
                f"0x{0x0800 + ndim:08x}); it is corrupt or not {os.path.basename(path)}.")
        raw_dims = _read_exact(f, 4 * ndim, path, "header")
        dims = tuple(int.from_bytes(raw_dims[i:i + 4], "big") for i in range(0, 4 * ndim, 4))
        size = math.prod(dims)
        if size > _MAX_IDX_BYTES:
            raise ConfigError(f"The file {path} announces dimensions {dims} "
                              f"({size} bytes); it is corrupt.")
        data = _read_exact(f, size, path, f"{dims} data")
        try:
            extra = f.read(1)
        except (OSError, EOFError, zlib.error) as e:
            raise ConfigError(f"The file {path} is corrupt ({type(e).__name__}: {e}); "
                              "download it again.") from None
        if extra:
            raise ConfigError(f"The file {path} is longer than its header's dimensions "
                              f"{dims} announce; it is corrupt.")
    return np.frombuffer(data, np.uint8).reshape(dims)


def read_keras_npz(path: str):
    """``x_train, y_train, x_test, y_test`` from a Keras ``.npz`` (no pickles)."""
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise ConfigError(f"The file {path} lacks the arrays "
                                  f"{', '.join(missing)}; a Keras archive holds "
                                  f"{', '.join(keys)}.")
            arrays = [np.asarray(z[k]) for k in keys]
    except ConfigError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ConfigError(f"The file {path} is not a readable .npz archive of numeric "
                          f"arrays ({type(e).__name__}: {e}); download it again.") from None
    out = []
    for k, a in zip(keys, arrays):
        want = 3 if k.startswith("x") else 1
        if a.ndim != want or not np.issubdtype(a.dtype, np.integer):
            raise ConfigError(f"The file {path} has {k} of shape {a.shape} and dtype "
                              f"{a.dtype}; expected {want}-d integers.")
        if k.startswith("x") and a.size and (a.min() < 0 or a.max() > 255):
            raise ConfigError(f"The file {path} has {k} pixel values outside 0..255.")
        out.append(a.astype(np.uint8) if k.startswith("x") else a.astype(np.int64))
    return tuple(out)


# --------------------------------------------------------------------------
# CIFAR-10 from its binary distribution
# --------------------------------------------------------------------------

def cifar10_files_sentence() -> str:
    """A sentence fragment naming the files ``cifar10`` needs."""
    return (f"the folder {CIFAR10_FOLDER} or directly the files "
            f"{', '.join(CIFAR10_TRAIN_FILES)} and {CIFAR10_TEST_FILE} (the binary "
            "version of CIFAR-10, https://www.cs.toronto.edu/~kriz/cifar.html, extracted)")


def find_cifar10(path: str) -> tuple[tuple[str, ...], str]:
    """``(training batch files, test batch file)`` in ``path/cifar-10-batches-bin``
    or, failing that, in ``path`` itself; ConfigError naming the folder and the
    files it lacks."""
    root = _abspath(path)
    if not os.path.isdir(root):
        raise ConfigError(f"data.path = {str(path)!r} is not an existing folder; for "
                          f"data.name = 'cifar10' it must hold {cifar10_files_sentence()}.")
    names = CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,)
    partial = None
    for folder in (os.path.join(root, CIFAR10_FOLDER), root):
        if not os.path.isdir(folder):
            continue
        missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
        if not missing:
            return (tuple(os.path.join(folder, n) for n in CIFAR10_TRAIN_FILES),
                    os.path.join(folder, CIFAR10_TEST_FILE))
        if len(missing) < len(names) and partial is None:
            partial = (folder, missing)
    if partial is not None:
        raise ConfigError(f"data.path = {str(path)!r}: the folder {partial[0]} has only "
                          f"some of the CIFAR-10 batches (missing {', '.join(partial[1])}); "
                          f"it must hold {cifar10_files_sentence()}.")
    hint = ""
    if os.path.isfile(os.path.join(root, "cifar-10-binary.tar.gz")):
        hint = "; extract cifar-10-binary.tar.gz there first (tar xzf cifar-10-binary.tar.gz)"
    elif (os.path.isdir(os.path.join(root, "cifar-10-batches-py"))
          or os.path.isfile(os.path.join(root, "cifar-10-python.tar.gz"))):
        hint = ("; the Python version (cifar-10-batches-py) is pickled and is never read, "
                "download the binary version")
    raise ConfigError(f"data.path = {str(path)!r} holds no CIFAR-10 binary batches; it "
                      f"must hold {cifar10_files_sentence()}{hint}.")


def read_cifar10_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels uint8 (N, 3072), labels uint8 (N,))`` of one CIFAR-10 binary batch.

    A batch is a sequence of 3073-byte records: the label (0..9), then the
    3072 pixels, channel-major (1024 red, 1024 green, 1024 blue, each 32 rows
    of 32). The file size must be a positive multiple of 3073.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise ConfigError(f"The file {path} is empty; a CIFAR-10 binary batch holds "
                          f"records of {CIFAR10_RECORD} bytes (1 label byte and "
                          f"{CIFAR10_PIXELS} pixel bytes).")
    if size % CIFAR10_RECORD:
        raise ConfigError(f"The file {path} has {size} bytes, not a multiple of the "
                          f"{CIFAR10_RECORD}-byte CIFAR-10 record (1 label byte and "
                          f"{CIFAR10_PIXELS} pixel bytes); it is truncated or not a "
                          "CIFAR-10 binary batch.")
    with open(path, "rb") as f:
        raw = np.frombuffer(_read_exact(f, size, path, "records"), np.uint8)
    records = raw.reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0]
    bad = np.flatnonzero(labels >= CIFAR10_CLASSES)
    if bad.size:
        raise ConfigError(f"The file {path} has label {int(labels[bad[0]])} in record "
                          f"{int(bad[0])}; CIFAR-10 labels are 0..9, so it is corrupt or "
                          "not CIFAR-10 (a CIFAR-100 record has two label bytes).")
    return records[:, 1:], labels


def _load_cifar10(d):
    train_files, test_file = find_cifar10(d.path)

    def read(files):
        parts = [read_cifar10_batch(f) for f in files]
        n = sum(len(lab) for _, lab in parts)
        x = np.empty((n, CIFAR10_PIXELS), np.float32)
        y = np.empty(n, np.int64)
        i = 0
        for pixels, lab in parts:
            x[i:i + len(lab)] = pixels
            y[i:i + len(lab)] = lab
            i += len(lab)
        x /= np.float32(255.0)
        return x, y

    x, y = read(train_files)
    x_test, y_test = read((test_file,))
    return x, y, x_test, y_test


# --------------------------------------------------------------------------
# The researcher's own arrays: .npz, CSV, parquet
# --------------------------------------------------------------------------

def arrays_file(path: str) -> tuple[str, str]:
    """``(absolute path, format)`` of ``data.name = "arrays"``'s file, the
    format (``npz``, ``csv`` or ``parquet``) from its suffix; ConfigError
    if the suffix is not one of :data:`ARRAYS_FORMATS` or the file is missing."""
    fmt = arrays_format(path)
    full = _abspath(path)
    if not os.path.isfile(full):
        raise ConfigError(f"data.path = {str(path)!r} is not an existing file; for "
                          f"data.name = 'arrays' it must be {_arrays_wanted()}.")
    return full, fmt


def _arrays_wanted() -> str:
    return ("a .npz archive (x_train, y_train, optionally x_test, y_test), a .csv or a "
            ".parquet file")


def arrays_format(path: str) -> str:
    """The format of an ``arrays`` file from its suffix (no file access)."""
    for suffix, fmt in ARRAYS_FORMATS.items():
        if str(path).lower().endswith(suffix):
            return fmt
    raise ConfigError(f"data.path = {str(path)!r} is not allowed for data.name = "
                      f"'arrays'; it must be {_arrays_wanted()}, i.e. end in "
                      f"{', '.join(ARRAYS_FORMATS)}.")


def holdout_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(test, rest)`` indices into ``n`` examples, each sorted: the first
    ``floor(test_fraction * n)`` of a permutation drawn with
    ``np.random.default_rng([seed, <test constant>])`` are the test set (a
    stream of ``data.seed`` other than the validation split's)."""
    num_test = int(math.floor(test_fraction * n))
    perm = np.random.default_rng([seed, _TEST_STREAM]).permutation(n)
    return np.sort(perm[:num_test]), np.sort(perm[num_test:])


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _number(v) -> str:
    """A value for a message: ``3``, ``0.5``, ``1e+300``."""
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        v = int(v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _finite_features(x: np.ndarray, path: str, where) -> np.ndarray:
    """float32 ``(N, F)`` of a numeric ``(N, F)`` array; ConfigError naming the
    first value that is NaN, infinite or beyond float32's range, located by
    ``where(row, column)``."""
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            i, j = (int(v) for v in np.argwhere(bad)[0])
            kind = "a missing or NaN value" if np.isnan(x[i, j]) else "an infinite value"
            raise ConfigError(f"The file {path} has {kind} at {where(i, j)}; every "
                              "feature must be a finite number.")
        if x.dtype.itemsize > 4:
            big = np.abs(x) > _FLOAT32_MAX
            if big.any():
                i, j = (int(v) for v in np.argwhere(big)[0])
                raise ConfigError(f"The file {path} has the value {_number(x[i, j])} at "
                                  f"{where(i, j)}, beyond float32's range "
                                  f"(|x| <= {_FLOAT32_MAX:.4g}); rescale the feature.")
    return np.ascontiguousarray(x, dtype=np.float32)


def _class_labels(y: np.ndarray, path: str, where, limit: int) -> np.ndarray:
    """int64 labels of a 1-d numeric array (integers, booleans or integral
    floats) in ``[0, limit)``; ConfigError naming the first bad one."""
    allowed_ = ("labels must be class indices, integers 0..C-1 "
                f"with C at most the {limit} examples of the file")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            kind = "a missing or NaN label" if np.isnan(y[i]) else "an infinite label"
            raise ConfigError(f"The file {path} has {kind} at {where(i)}; {allowed_}.")
        bad = y != np.floor(y)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"The file {path} has the label {_number(y[i])} at "
                              f"{where(i)}, not an integer; {allowed_} (regression "
                              "targets are not supported).")
    if y.dtype.kind == "b":
        y = y.astype(np.int64)
    bad = (y < 0) | (y >= limit)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"The file {path} has the label {_number(y[i])} at {where(i)}; "
                          f"{allowed_} (regression targets are not supported).")
    return y.astype(np.int64)


def read_arrays_npz(path: str):
    """``x_train, y_train, x_test, y_test`` of an ``arrays`` ``.npz`` archive
    (``x_test, y_test`` None when the archive has no test split).

    Read with ``allow_pickle=False``. Inputs are ``(N, ...)`` arrays of
    booleans, integers or floats, flattened to float32 ``(N, F)``; labels are
    ``(N,)`` or ``(N, 1)`` class indices. Other arrays in the archive are
    ignored. ConfigError names the file and the first problem.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ConfigError(f"The file {path} is not a readable .npz archive of numeric "
                          f"arrays ({type(e).__name__}: {e}).") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ConfigError(f"The file {path} is a single .npy array, not a .npz archive "
                          "of x_train, y_train (and optionally x_test, y_test); save it "
                          "with np.savez.")
    with archive as z:
        names = set(z.files)
        missing = [k for k in ("x_train", "y_train") if k not in names]
        if missing:
            raise ConfigError(f"The file {path} lacks the arrays {', '.join(missing)} (it "
                              f"holds {', '.join(sorted(names)) or 'none'}); an 'arrays' "
                              ".npz holds x_train, y_train and optionally x_test, y_test.")
        if ("x_test" in names) != ("y_test" in names):
            have, lack = ("x_test", "y_test") if "x_test" in names else ("y_test", "x_test")
            raise ConfigError(f"The file {path} has {have} but not {lack}; give both "
                              "arrays of the test split or neither.")
        keys = [k for k in ("x_train", "y_train", "x_test", "y_test") if k in names]
        try:
            arrays = {k: np.asarray(z[k]) for k in keys}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise ConfigError(f"The file {path} is not a readable .npz archive of numeric "
                              f"arrays ({type(e).__name__}: {e}).") from None
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise ConfigError(f"The file {path} has {k} of dtype {a.dtype}; it must hold "
                              "booleans, integers or real numbers.")
    # Labels may reach at most the number of examples in the file.
    total = sum(arrays[k].shape[0] for k in ("y_train", "y_test")
                if k in arrays and arrays[k].ndim)
    x_ref = None
    out = []
    for split in ("train", "test"):
        if f"x_{split}" not in arrays:
            out += [None, None]
            continue
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        xk, yk = f"x_{split}", f"y_{split}"
        if x.ndim < 2:
            raise ConfigError(f"The file {path} has {xk} of shape {x.shape}; it must be "
                              "(N, F) or (N, ...) with one row per example (a single "
                              "feature as x[:, None]).")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ConfigError(f"The file {path} has {yk} of shape {y.shape}; it must be "
                              "(N,), one class index per example.")
        if x.shape[0] != y.shape[0]:
            raise ConfigError(f"The file {path} has {x.shape[0]} examples in {xk} but "
                              f"{y.shape[0]} labels in {yk}; they must agree.")
        if x.shape[0] == 0:
            raise ConfigError(f"The file {path} has no examples in {xk} (shape "
                              f"{x.shape}); each split needs at least one.")
        if math.prod(x.shape[1:]) == 0:
            raise ConfigError(f"The file {path} has {xk} of shape {x.shape}, with no "
                              "features; each example needs at least one.")
        if x_ref is not None and x.shape[1:] != x_ref.shape[1:]:
            raise ConfigError(f"The file {path} has x_train of shape {x_ref.shape} but "
                              f"x_test of shape {x.shape}; the examples of both splits "
                              "must have the same shape.")
        x_ref = x
        flat = x.reshape(x.shape[0], -1)
        feats = _finite_features(flat, path, lambda i, j, k=xk, s=x.shape[1:]:
                                 f"{k}[{', '.join(map(str, (i,) + np.unravel_index(j, s)))}]")
        labels = _class_labels(y, path, lambda i, k=yk: f"{k}[{i}]", total)
        out += [feats, labels]
    return tuple(out)


def _is_text(dtype) -> bool:
    import pandas as pd
    return dtype == object or pd.api.types.is_string_dtype(dtype)


def read_table(path: str, fmt: str, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x float32 (N, F), y int64 (N,))`` of a CSV or parquet table.

    The column named ``label_column`` holds the class indices; every other
    column of booleans, integers or reals is a feature, in file order. A
    text column none of whose values reads as a number (a name, an id) is
    left out, as are columns of other types (dates, categories); a text
    column where some value reads as a number is refused (a numeric column
    with a stray ``?``). CSV files need a header line. ConfigError names the
    file and the first problem (rows are counted from 1 after the header).
    """
    import pandas as pd
    kind = "CSV" if fmt == "csv" else "parquet"
    errors: tuple = (ValueError, OSError, UnicodeError, pd.errors.ParserWarning)
    try:
        if fmt == "csv":
            # index_col=False: a first row longer than the header is an error
            # (the warning is raised), never silently read as an index.
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                frame = pd.read_csv(path, index_col=False)
        else:
            import pyarrow
            errors += (pyarrow.ArrowException,)
            frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"The file {path} is empty; a CSV file needs a header line "
                          f"naming its columns ({label_column!r} among them) and one line "
                          "per example.") from None
    except ImportError as e:
        raise ConfigError(f"Reading the {kind} file {path} needs a package that is not "
                          f"installed ({e}); install pyarrow.") from None
    except errors as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"The file {path} is not a readable {kind} file "
                          f"({type(e).__name__}: {first}).") from None
    columns = [str(c) for c in frame.columns]
    if label_column not in columns:
        shown = ", ".join(repr(c) for c in columns[:12]) + (", ..." if len(columns) > 12
                                                            else "")
        raise ConfigError(f"data.label_column = {label_column!r} is not a column of the "
                          f"file {path}; its columns are {shown or 'none'}.")
    if columns.count(label_column) > 1:
        raise ConfigError(f"The file {path} has {columns.count(label_column)} columns named "
                          f"{label_column!r}; the label column must be one.")
    if len(frame) == 0:
        raise ConfigError(f"The file {path} has columns but no examples (0 rows); it "
                          "needs at least one.")
    n = len(frame)
    label = frame.iloc[:, columns.index(label_column)]
    features, names = [], []
    for j, name in enumerate(columns):
        if name == label_column:
            continue
        col = frame.iloc[:, j]
        if pd.api.types.is_complex_dtype(col.dtype):
            raise ConfigError(f"The file {path} has complex numbers in column {name!r}; "
                              "features must be real numbers.")
        if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
            features.append(col.to_numpy(dtype=np.float64, na_value=np.nan))
            names.append(name)
        elif _is_text(col.dtype):
            present = col.notna().to_numpy()
            numeric = pd.to_numeric(col, errors="coerce").notna().to_numpy()
            if numeric.any():
                text = np.flatnonzero(present & ~numeric)
                if text.size:
                    i = int(text[0])
                    raise ConfigError(
                        f"The file {path} has column {name!r} mixing numbers with text "
                        f"such as {col.iloc[i]!r} in row {i + 1}; a feature column must "
                        "hold only numbers (missing values are refused too), and only "
                        "text columns without numbers are left out.")
                example = col.iloc[int(np.flatnonzero(numeric)[0])]
                raise ConfigError(f"The file {path} has column {name!r} holding numbers "
                                  f"stored as text (such as {example!r}); store them as "
                                  "numbers, or drop the column.")
    if not features:
        raise ConfigError(f"The file {path} has no numeric feature column besides the "
                          f"label column {label_column!r}; features must be columns of "
                          "numbers.")
    x = _finite_features(np.column_stack(features), path,
                         lambda i, j: f"column {names[j]!r}, row {i + 1}")
    if _is_text(label.dtype):
        first = label.dropna()
        example = repr(first.iloc[0]) if len(first) else "none"
        raise ConfigError(f"The file {path} has text labels in column {label_column!r} "
                          f"(such as {example}); labels must be class indices, integers "
                          "0..C-1 (renumber the classes).")
    numeric = (pd.api.types.is_bool_dtype(label.dtype)
               or pd.api.types.is_numeric_dtype(label.dtype))
    if not numeric or pd.api.types.is_complex_dtype(label.dtype):
        raise ConfigError(f"The file {path} has labels of type {label.dtype} in column "
                          f"{label_column!r}; labels must be class indices, integers 0..C-1.")
    if label.isna().any() or pd.api.types.is_float_dtype(label.dtype):
        y = label.to_numpy(dtype=np.float64, na_value=np.nan)
    elif pd.api.types.is_bool_dtype(label.dtype):
        y = label.to_numpy(dtype=bool)
    elif pd.api.types.is_unsigned_integer_dtype(label.dtype):
        y = label.to_numpy(dtype=np.uint64)
    else:
        y = label.to_numpy(dtype=np.int64)
    y = _class_labels(y, path, lambda i: f"column {label_column!r}, row {i + 1}", n)
    return x, y


def _load_arrays(d):
    """The ``arrays`` dataset: its splits and its number of classes."""
    path, fmt = arrays_file(d.path)
    if fmt == "npz":
        x, y, x_test, y_test = read_arrays_npz(path)
    else:
        x, y = read_table(path, fmt, str(d.label_column))
        x_test = y_test = None
    if x_test is None:
        f = float(d.test_fraction)
        test, rest = holdout_indices(len(y), f, int(d.seed))
        if test.size == 0:
            raise ConfigError(f"data.test_fraction = {d.test_fraction!r} is not allowed "
                              f"for the file {path}, which has no test split: it holds "
                              f"out floor({f} * {len(y)}) = 0 of its {len(y)} examples; "
                              f"give at least {1 / len(y):.3g} (or a .npz with x_test, y_test).")
        x, y, x_test, y_test = x[rest], y[rest], x[test], y[test]
    num_classes = int(max(y.max(), y_test.max())) + 1
    if num_classes < 2:
        raise ConfigError(f"The file {path} has only the label 0; a classification "
                          "dataset needs at least two classes, 0 and 1.")
    return x, y, x_test, y_test, num_classes


# --------------------------------------------------------------------------
# Validation against the data
# --------------------------------------------------------------------------

def num_train(config) -> int:
    """The number of training examples after the validation split."""
    d = _data_section(config)
    if d.name == "mnist1d":
        total = 4000
    elif d.name in ("random",) + REGRESSION:
        total = int(d.num_train)
    else:                                   # read from files: load (and check) them
        return load(d).num_train
    return total - int(math.floor(float(d.val_fraction) * total))


def check(config) -> None:
    """Validates what depends on the data; raises ConfigError with one sentence.

    ``data.path`` must hold the files of ``mnist``, ``fashion_mnist``,
    ``cifar10`` or be the file of ``arrays`` (they are loaded and checked),
    the training set must not be empty, and ``data.batch_size`` must be at
    most the training set's size.
    """
    d = _data_section(config)
    if d.name not in DATASETS:
        raise ConfigError(f"data.name = {d.name!r} is not allowed; choose one of "
                          f"{', '.join(repr(n) for n in DATASETS)}.")
    if d.order not in ORDERS:
        raise ConfigError(f"data.order = {d.order!r} is not allowed; choose one of "
                          f"{', '.join(repr(o) for o in ORDERS)}.")
    if d.name in FILE_DATASETS and not d.path:
        raise ConfigError(f"data.path = {d.path!r} is not allowed for data.name = "
                          f"{d.name!r}; give {path_wanted(d.name)}.")
    n = num_train(d)
    if n < 1:
        raise ConfigError(f"data.val_fraction = {d.val_fraction!r} is not allowed here; "
                          f"it leaves no training examples of {d.name}.")
    if int(d.batch_size) > n:
        raise ConfigError(f"data.batch_size = {d.batch_size} is not allowed; it must be "
                          f"<= the training set size {n} of {d.name} (after holding out "
                          f"data.val_fraction = {d.val_fraction}), or 0 for full batch.")


# --------------------------------------------------------------------------
# The probe batch
# --------------------------------------------------------------------------

def probe_indices(config) -> np.ndarray:
    """Sorted, distinct indices into ``x_train`` of the diagnostics' probe batch.

    ``min(diagnostics.probe_size, n_train)`` indices drawn without replacement
    with ``np.random.default_rng([data.seed, <probe constant>])``: they depend
    on the data config and ``data.seed`` only, never on the member's ``seed``.
    """
    d = config.data
    n = num_train(config)
    size = min(int(config.diagnostics.probe_size), n)
    rng = np.random.default_rng([int(d.seed), _PROBE_STREAM])
    idx = np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)
    idx.setflags(write=False)
    return idx


def probe_batch(config) -> np.ndarray:
    """The probe inputs: ``x_train[probe_indices(config)]``, standardised as fed."""
    return load(config).x_train[probe_indices(config)]


def sharpness_indices(config, n_train: int | None = None) -> np.ndarray | None:
    """Sorted, distinct indices into ``x_train`` of the examples whose training
    loss the ``sharpness`` diagnostic takes the Hessian of, or None for the
    whole training set.

    Full batch (``data.batch_size = 0``): None, the objective gradient
    descent descends. Otherwise ``min(diagnostics.sharpness_batch, n_train)``
    indices drawn without replacement with
    ``np.random.default_rng([data.seed, <sharpness constant>])`` (a stream of
    its own, so the batch is not the probe batch), fixed for the run: they
    depend on the data config, ``data.seed`` and the batch size only, never on
    the member's ``seed``; None when they would be every example.
    ``n_train`` (the training set's size) saves loading the data when known.
    """
    d = config.data
    if int(d.batch_size) == 0:
        return None
    n = num_train(config) if n_train is None else int(n_train)
    size = min(int(config.diagnostics.sharpness_batch), n)
    if size == n:
        return None
    rng = np.random.default_rng([int(d.seed), _SHARPNESS_STREAM])
    idx = np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)
    idx.setflags(write=False)
    return idx


# --------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------

def shared_key(config) -> jax.Array:
    """The key of ``data.order = "shared"``: ``PRNGKey(data.seed)``, so it
    depends on the data config only."""
    d = _data_section(config)
    return jax.random.PRNGKey(int(d.seed))


def _mulmod(s, b: int, n: int):
    """``(s * b) % n`` for traced ``0 <= s < n`` without int32 overflow."""
    b %= n
    if n * max(b, 1) < 2 ** 31:
        return (s * b) % n
    # Double-and-add over the bits of s with precomputed (2^k b) mod n; every
    # intermediate stays below 2n < 2^32 in uint32.
    s = s.astype(jnp.uint32)
    acc = jnp.zeros((), jnp.uint32)
    c = b
    k = 0
    while (1 << k) < n:
        bit = (s >> k) & jnp.uint32(1)
        acc = acc + bit * jnp.uint32(c)
        acc = jnp.where(acc >= n, acc - jnp.uint32(n), acc)
        c = (2 * c) % n
        k += 1
    return acc.astype(jnp.int32)


# Rounds of the Feistel network of :func:`shuffled_indices`. Four rounds of a
# pseudorandom function give a pseudorandom permutation as the halves grow
# (Luby & Rackoff 1988, "How to construct pseudorandom permutations from
# pseudorandom functions"), but on small domains the order of neighbours is
# far from uniform with four (over 4,000 keys, chi-square p = 3e-84 for the
# difference pi(1) - pi(0) at n = 8, 1e-12 at n = 23) and with eight (6e-4 at
# n = 8); twelve pass at n = 8, 23, 100 and 1,000 (p >= 0.16). Measured cost:
# 2.5 ms per step for 1,024 members' batches of 128 from 60,000 examples on
# two CPU cores (1.0 ms with four rounds).
FEISTEL_ROUNDS = 12


def _mix32(x):
    """A 32-bit integer hash with good avalanche (Wellons 2018, hash-prospector's
    ``lowbias32``: xor-shift 16, multiply 0x7feb352d, xor-shift 15, multiply
    0x846ca68b, xor-shift 16)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _feistel(round_keys, x, bits: int):
    """A keyed bijection of ``[0, 2**bits)`` (uint32 ``x``): an unbalanced
    Feistel network whose state is a left part of ``wl`` and a right part of
    ``wr`` bits (``wl + wr = bits``); each round maps ``(L, R)`` to ``(R, L xor
    F(R))``, ``F(R) = mix32(R xor k_r)`` cut to ``wl`` bits, and swaps the
    widths. Invertible round by round (``L = L' xor F(R)``), whatever the keys."""
    wl, wr = bits // 2, bits - bits // 2
    left, right = x >> wr, x & jnp.uint32((1 << wr) - 1)
    for k in round_keys:
        f = _mix32(right ^ k) & jnp.uint32((1 << wl) - 1)
        left, right, wl, wr = right, left ^ f, wr, wl
    return (left << wr) | right


def shuffled_indices(key, positions, n: int) -> jax.Array:
    """int32 ``pi(positions)`` for a pseudorandom permutation ``pi`` of
    ``[0, n)`` chosen by ``key``, evaluated at the given positions only.

    ``pi`` is a keyed Feistel network (:func:`_feistel`, ``FEISTEL_ROUNDS``
    rounds with 32-bit round keys drawn from ``key``) on the smallest
    ``[0, 2**k)`` that holds ``[0, n)``, restricted to ``[0, n)`` by
    cycle-walking (Black & Rogaway 2002, "Ciphers with arbitrary finite
    domains", Sec. 2): an image ``>= n`` is permuted again until it falls
    inside, which stays a bijection of ``[0, n)``; fewer than two passes are
    expected (``2**k < 2n``). So a batch costs O(batch size) work and no
    memory, whatever ``n`` (see ``FEISTEL_ROUNDS`` for its cost and how the
    number of rounds was chosen).
    """
    bits = max(1, (int(n) - 1).bit_length())
    round_keys = [jax.random.bits(jax.random.fold_in(key, r), (), jnp.uint32)
                  for r in range(FEISTEL_ROUNDS)]
    limit = jnp.uint32(n)

    def walk(p):
        return jax.lax.while_loop(lambda x: x >= limit,
                                  lambda x: _feistel(round_keys, x, bits),
                                  _feistel(round_keys, p, bits))

    return jax.vmap(walk)(jnp.asarray(positions).astype(jnp.uint32)).astype(jnp.int32)


def batch_indices(step, *, num_train: int, batch_size: int, order: str,
                  member_key=None, shared_key=None) -> jax.Array:
    """int32 ``(B,)`` indices into the training set of one member's batch at ``step``.

    Pure and deterministic in ``step`` (a Python int or traced int32 scalar), so
    it is safe under ``jit``, ``scan`` and ``vmap`` (over ``member_key``) and a
    resumed run sees the same batches. ``num_train``, ``batch_size`` and
    ``order`` are static. ``batch_size = 0`` (or ``= num_train``) is the full
    batch, ``arange(num_train)``; otherwise ``batch_size <= num_train``. The
    cost of a batch is O(B), whatever ``num_train``.

    * ``shuffle``: epochs without replacement, a fresh permutation per member
      and epoch: with ``nb = num_train // B`` batches per epoch, epoch ``e =
      step // nb`` visits the examples in the order ``pi_e(0), pi_e(1), ...``
      of the permutation ``pi_e`` that :func:`shuffled_indices` draws with
      ``fold_in(member_key, e)``, and the batch is positions ``(step % nb) * B
      ... + B - 1`` of it (the last ``num_train mod B`` positions of each
      permutation are dropped).
    * ``shared``: the same with ``shared_key`` (see :func:`shared_key`), so all
      members see the same batches.
    * ``sequential``: the MNIST-1D reference recipe (Greydanus, ``train.py``:
      ``bix = (step * B) % N; x[bix:bix + B]``), except that a batch running past
      the end wraps around to the start, so every batch has ``B`` examples.
    """
    n, b = int(num_train), int(batch_size)
    if order not in ORDERS:
        raise ValueError(f"order = {order!r} is not one of {', '.join(ORDERS)}.")
    if b < 0 or b > n:
        raise ValueError(f"batch_size = {b} must be in [0, num_train = {n}] "
                         "(0 means full batch).")
    if b == 0 or b == n:
        return jnp.arange(n, dtype=jnp.int32)
    step = jnp.asarray(step).astype(jnp.int32)
    if order == "sequential":
        start = _mulmod(step % n, b, n)
        return ((start + jnp.arange(b, dtype=jnp.int32)) % n).astype(jnp.int32)
    key = member_key if order == "shuffle" else shared_key
    if key is None:
        raise ValueError(f"order = {order!r} needs "
                         f"{'member_key' if order == 'shuffle' else 'shared_key'}.")
    nb = n // b
    positions = (step % nb) * b + jnp.arange(b, dtype=jnp.int32)
    return shuffled_indices(jax.random.fold_in(key, step // nb), positions, n)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """The static part of a group's batching: :func:`batch_indices`'s
    arguments but the step and the member's key, and the dtype of stream
    batches."""

    num_train: int
    batch_size: int
    order: str
    seed: int            # data.seed, whose key orders "shared" batches

    @classmethod
    def of(cls, config, num_train: int) -> "BatchPlan":
        d = config.data
        return cls(int(num_train), int(d.batch_size), str(d.order), int(d.seed))


def training_batch(plan: BatchPlan, tasks_: tasks.Tasks, train, step, member_key, t,
                   dtype=jnp.float32):
    """One member's training batch ``(x, y)`` at ``step``, as task ``t`` (the
    task of ``step``, :meth:`deadjax.tasks.Tasks.at`) presents it: rows
    :func:`batch_indices` of the stored training split ``train = (x, y)``,
    or, for the regression stream, fresh examples drawn with
    ``fold_in(key, step)`` (the member's key, or the shared one). A pure
    function of the member's key and the step."""
    if tasks_.is_stream:
        key = member_key if plan.order != "shared" else jax.random.PRNGKey(plan.seed)
        return tasks_.stream_batch(jax.random.fold_in(key, step), t, plan.batch_size, dtype)
    idx = batch_indices(step, num_train=plan.num_train, batch_size=plan.batch_size,
                        order=plan.order, member_key=member_key,
                        shared_key=jax.random.PRNGKey(plan.seed))
    return tasks_.present(train[0][idx], train[1][idx], t)


SPLITS = ("train", "val", "test", "probe")


def device_data(dataset: Dataset, probe_idx: np.ndarray) -> dict[str, tuple]:
    """What every program reads, on the default device: ``{"train", "val",
    "test", "probe"}``, each ``(x, y)``; the probe is ``x_train[probe_idx]``."""
    return {"train": (jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)),
            "val": (jnp.asarray(dataset.x_val), jnp.asarray(dataset.y_val)),
            "test": (jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)),
            "probe": (jnp.asarray(dataset.x_train[probe_idx]),
                      jnp.asarray(dataset.y_train[probe_idx]))}
