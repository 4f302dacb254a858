"""Own datasets: data.name = "arrays" (.npz, CSV, parquet) and "cifar10" (binary
batches), read from small files the tests write; values read equal the values
written, every refusal is one sentence naming the file, and each trains and
evaluates end to end."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

import deadjax
from deadjax import data, runner
from deadjax.config import ConfigError, default_config, validate
from tests.conftest import tiny_config

# The documented stream of the test hold-out: np.random.default_rng([data.seed, "test"]).
TEST_STREAM = 0x74657374


def cfg(**data_fields):
    c = default_config()
    for k, v in data_fields.items():
        c.data[k] = v
    return c


def arrays_cfg(path, **kw):
    return cfg(name="arrays", path=str(path), **kw)


def raw(path, **kw):
    """The dataset of ``path`` as read: no validation split, no standardisation."""
    return data.load(arrays_cfg(path, val_fraction=0.0, standardize=False, **kw))


def reference_split(n, val_fraction, seed):
    k = int(np.floor(val_fraction * n))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:k]), np.sort(perm[k:])


def reference_holdout(n, test_fraction, seed):
    k = int(np.floor(test_fraction * n))
    perm = np.random.default_rng([seed, TEST_STREAM]).permutation(n)
    return np.sort(perm[:k]), np.sort(perm[k:])


def reference_standardise(x_train, *others):
    x_train = x_train.astype(np.float64)
    mean, std = x_train.mean(0), x_train.std(0)
    std[std < 1e-6] = 1.0
    return [(a.astype(np.float64) - mean) / std for a in (x_train, *others)]


def check_pipeline(ds, x, y, x_test, y_test, val_fraction, seed):
    """``ds`` is ``(x, y)`` split and standardised as docs/data.md says."""
    val, train = reference_split(len(y), val_fraction, seed)
    xt, xv, xs = reference_standardise(x[train], x[val], x_test)
    np.testing.assert_allclose(ds.x_train, xt, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.x_val, xv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.x_test, xs, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ds.y_train, y[train])
    np.testing.assert_array_equal(ds.y_val, y[val])
    np.testing.assert_array_equal(ds.y_test, y_test)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32


def make_xy(seed, n, shape, classes):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    y[:classes] = np.arange(classes)           # every class occurs
    return x, y


# --------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------

def test_npz_with_test_split(tmp_path):
    x, y = make_xy(0, 40, (2, 3), 4)
    x_test, y_test = make_xy(1, 9, (2, 3), 4)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y.astype(np.uint8), x_test=x_test,
             y_test=y_test.reshape(-1, 1), notes=np.arange(3))
    ds = raw(tmp_path / "d.npz")
    assert ds.name == "arrays" and ds.num_classes == 4
    assert ds.x_train.shape == (40, 6) and ds.x_test.shape == (9, 6)
    # Flattened in C order: feature 3 of example 5 is x[5, 1, 0].
    np.testing.assert_array_equal(ds.x_train, x.reshape(40, 6))
    assert ds.x_train[5, 3] == x[5, 1, 0]
    np.testing.assert_array_equal(ds.x_test, x_test.reshape(9, 6))
    np.testing.assert_array_equal(ds.y_train, y)
    np.testing.assert_array_equal(ds.y_test, y_test)
    # data.test_fraction does not apply when the file has a test split.
    assert raw(tmp_path / "d.npz", test_fraction=0.5).x_test.shape == (9, 6)
    c = arrays_cfg(tmp_path / "d.npz", val_fraction=0.25, seed=3)
    check_pipeline(data.load(c), x.reshape(40, 6).astype(np.float64), y,
                   x_test.reshape(9, 6), y_test, 0.25, 3)
    assert data.num_train(c) == 30


def test_npz_without_test_split_holds_out_test_fraction(tmp_path):
    x, y = make_xy(2, 50, (5,), 3)
    x = (x * 10).astype(np.int16)               # integer features become float32
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    test, rest = reference_holdout(50, 0.2, 7)
    assert len(test) == 10
    ds = raw(tmp_path / "d.npz", seed=7)
    np.testing.assert_array_equal(ds.x_test, x[test].astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, y[test])
    np.testing.assert_array_equal(ds.x_train, x[rest].astype(np.float32))
    np.testing.assert_array_equal(ds.y_train, y[rest])
    ds = raw(tmp_path / "d.npz", seed=7, test_fraction=0.3)
    assert ds.x_test.shape == (15, 5) and ds.x_train.shape == (35, 5)
    # Then the validation split and standardisation, as for every dataset.
    c = arrays_cfg(tmp_path / "d.npz", seed=7, val_fraction=0.1)
    check_pipeline(data.load(c), x[rest].astype(np.float64), y[rest], x[test], y[test],
                   0.1, 7)


def test_labels_may_have_gaps(tmp_path):
    """C = max label + 1 over train and test; a class with no example is allowed."""
    x, _ = make_xy(3, 12, (2,), 2)
    y = np.array([0, 2, 5, 0, 2, 5, 0, 2, 5, 0, 2, 5])
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:3], y_test=[0, 6, 2])
    ds = raw(tmp_path / "d.npz")
    assert ds.num_classes == 7
    np.testing.assert_array_equal(ds.y_test, [0, 6, 2])


# --------------------------------------------------------------------------
# CSV and parquet
# --------------------------------------------------------------------------

def make_frame(seed, n=40):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "f_real": rng.normal(size=n).astype(np.float32).astype(np.float64),
        "id": [f"item{i}" for i in range(n)],          # text: left out
        "target": np.r_[0, 1, 2, rng.integers(0, 3, size=n - 3)],
        "f_int": rng.integers(-5, 6, size=n),
        "f_bool": rng.random(n) > 0.5,
    })


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_columns_labels_and_holdout(tmp_path, fmt):
    frame = make_frame(4)
    path = tmp_path / f"t.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    x = np.stack([frame.f_real, frame.f_int, frame.f_bool.astype(float)], 1)
    y = frame.target.to_numpy()
    test, rest = reference_holdout(40, 0.25, 2)
    ds = raw(path, label_column="target", test_fraction=0.25, seed=2)
    assert ds.num_classes == 3 and ds.x_train.shape == (30, 3)
    np.testing.assert_array_equal(ds.x_train, x[rest].astype(np.float32))
    np.testing.assert_array_equal(ds.x_test, x[test].astype(np.float32))
    np.testing.assert_array_equal(ds.y_train, y[rest])
    np.testing.assert_array_equal(ds.y_test, y[test])
    c = arrays_cfg(path, label_column="target", test_fraction=0.25, seed=2, val_fraction=0.2)
    check_pipeline(data.load(c), x[rest], y[rest], x[test], y[test], 0.2, 2)


def test_parquet_nullable_and_float_labels(tmp_path):
    frame = pd.DataFrame({"a": pd.array([1, 2, 3, 4, 5], dtype="Int64"),
                          "label": [0.0, 1.0, 1.0, 0.0, 1.0]})
    frame.to_parquet(tmp_path / "t.pq")
    ds = raw(tmp_path / "t.pq", test_fraction=0.2)
    assert ds.num_classes == 2
    np.testing.assert_array_equal(np.sort(np.r_[ds.x_train[:, 0], ds.x_test[:, 0]]),
                                  [1, 2, 3, 4, 5])


# --------------------------------------------------------------------------
# CIFAR-10 binary batches
# --------------------------------------------------------------------------

def write_cifar(folder, n_per_batch=8, n_test=10, seed=0):
    """Six batch files of random records; returns (images (N, 3, 32, 32), labels)
    of the training and test sets."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    out = []
    for name, n in [(f"data_batch_{i}.bin", n_per_batch) for i in range(1, 6)] + [
            ("test_batch.bin", n_test)]:
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        records = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
        (folder / name).write_bytes(records.tobytes())
        out.append((images, labels))
    train = (np.concatenate([a for a, _ in out[:5]]), np.concatenate([b for _, b in out[:5]]))
    return train, out[5]


@pytest.mark.parametrize("sub", ["cifar-10-batches-bin", ""])
def test_cifar10_binary(tmp_path, sub):
    (images, labels), (t_images, t_labels) = write_cifar(tmp_path / sub if sub else tmp_path)
    c = cfg(name="cifar10", path=str(tmp_path), val_fraction=0.0, standardize=False)
    ds = data.load(c)
    assert ds.num_classes == 10 and ds.x_train.shape == (40, 3072)
    assert ds.x_test.shape == (10, 3072)
    np.testing.assert_array_equal(ds.y_train, labels)
    np.testing.assert_array_equal(ds.y_test, t_labels)
    # Feature k is channel k // 1024, row (k % 1024) // 32, column k % 32, in [0, 1].
    np.testing.assert_array_equal(ds.x_train, images.reshape(40, -1) / np.float32(255))
    assert ds.x_train[9, 1024 + 32 * 5 + 7] == np.float32(images[9, 1, 5, 7] / 255)
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1
    np.testing.assert_array_equal(ds.x_test, t_images.reshape(10, -1) / np.float32(255))
    c = cfg(name="cifar10", path=str(tmp_path), val_fraction=0.25, seed=1)
    check_pipeline(data.load(c), images.reshape(40, -1) / 255.0, labels.astype(np.int64),
                   t_images.reshape(10, -1) / 255.0, t_labels, 0.25, 1)


# --------------------------------------------------------------------------
# The cache sees a changed file
# --------------------------------------------------------------------------

def test_cache_reads_a_rewritten_file_again(tmp_path):
    x, y = make_xy(5, 20, (3,), 2)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=y)
    first = raw(path)
    assert raw(path) is first
    assert raw(path, batch_size=3, order="shared") is first
    np.savez(path, x_train=x + 1, y_train=y)              # same size, new values
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = raw(path)
    assert second is not first
    np.testing.assert_array_equal(second.x_train, first.x_train + np.float32(1))
    # The label column and the test share are part of the key too.
    frame = pd.DataFrame({"a": np.arange(10.0), "label": [0, 1] * 5, "other": [1, 0] * 5})
    frame.to_csv(tmp_path / "t.csv", index=False)
    by_label = raw(tmp_path / "t.csv")
    by_other = raw(tmp_path / "t.csv", label_column="other")
    assert by_label.x_train.shape[1] == by_other.x_train.shape[1] == 2
    np.testing.assert_array_equal(by_label.y_train, 1 - by_other.y_train)
    assert raw(tmp_path / "t.csv", test_fraction=0.5).x_test.shape == (5, 2)


def test_cache_reads_a_rewritten_batch_again(tmp_path):
    (images, _), _ = write_cifar(tmp_path / "cifar-10-batches-bin")
    c = cfg(name="cifar10", path=str(tmp_path), val_fraction=0.0, standardize=False)
    first = data.load(c)
    assert data.load(c) is first
    rec = bytearray((tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes())
    rec[1] = (rec[1] + 1) % 256                 # the first pixel, same size
    (tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin").write_bytes(bytes(rec))
    st = os.stat(tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin")
    os.utime(tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin",
             ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = data.load(c)
    assert second is not first
    assert second.x_train[0, 0] == np.float32(rec[1] / 255)
    np.testing.assert_array_equal(second.x_train[1:], first.x_train[1:])


# --------------------------------------------------------------------------
# End to end: each trains and evaluates through run_sweep
# --------------------------------------------------------------------------

def _train(tmp_path, **data_fields):
    c = tiny_config(train__steps=4, train__eval_every=2, train__checkpoint_every=2,
                    data__batch_size=8, model__widths=(6,), diagnostics__enabled=False)
    for k, v in data_fields.items():
        c.data[k] = v
    runner.run_sweep(c, [{}], tmp_path / "run", tensorboard=False)
    frame = deadjax.load_results(tmp_path / "run").sort_values("step")
    assert frame.step.tolist() == [0, 2, 4]
    n_test = data.load(c).x_test.shape[0]
    acc = frame["test/accuracy"].to_numpy()
    assert np.all((acc >= 0) & (acc <= 1))
    np.testing.assert_allclose(acc * n_test, np.round(acc * n_test), atol=1e-4)
    assert frame["test/loss"].notna().all() and frame["train/loss"].notna().all()
    return frame


def _write_npz(tmp_path):
    x, y = make_xy(6, 48, (4,), 3)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:12], y_test=y[:12])
    return dict(name="arrays", path=str(tmp_path / "d.npz"))


def _write_csv(tmp_path):
    make_frame(7, n=48).to_csv(tmp_path / "t.csv", index=False)
    return dict(name="arrays", path=str(tmp_path / "t.csv"), label_column="target")


def _write_parquet(tmp_path):
    make_frame(8, n=48).to_parquet(tmp_path / "t.parquet")
    return dict(name="arrays", path=str(tmp_path / "t.parquet"), label_column="target",
                test_fraction=0.25)


def _write_cifar10(tmp_path):
    write_cifar(tmp_path / "cifar" / "cifar-10-batches-bin")
    return dict(name="cifar10", path=str(tmp_path / "cifar"))


@pytest.mark.parametrize("write", [_write_npz, _write_csv, _write_parquet, _write_cifar10],
                         ids=["npz", "csv", "parquet", "cifar10"])
def test_end_to_end(tmp_path, write):
    _train(tmp_path, **write(tmp_path))


# --------------------------------------------------------------------------
# Refusals: one sentence each, naming the field or file
# --------------------------------------------------------------------------

def test_config_refusals(tmp_path):
    for name in ("arrays", "cifar10"):
        with pytest.raises(ConfigError, match=f"data.path = '' is not allowed for "
                                              f"data.name = '{name}'; give the"):
            validate(cfg(name=name))
        with pytest.raises(ConfigError, match="data.path = '' is not allowed"):
            data.check(cfg(name=name))
    with pytest.raises(ConfigError, match=r"data.path = 'x.txt' is not allowed for data.name "
                                          r"= 'arrays'; it must be .*\.npz, \.csv, \.parquet"):
        validate(cfg(name="arrays", path="x.txt"))
    with pytest.raises(ConfigError, match="data.label_column = '' is not allowed; it must "
                                          "be a non-empty string"):
        validate(cfg(name="arrays", path="x.csv", label_column=""))
    with pytest.raises(ConfigError, match=r"data.test_fraction = 1.0 is not allowed; it must "
                                          r"be in \[0.0, 1.0\)"):
        validate(cfg(name="arrays", path="x.csv", test_fraction=1.0))
    with pytest.raises(ConfigError, match="data.name = 'cifar' is not allowed"):
        validate(cfg(name="cifar"))
    with pytest.raises(ConfigError, match="is not an existing file; for data.name = 'arrays'"):
        data.load(arrays_cfg(tmp_path / "none.npz"))
    # data.batch_size against the training set left after both hold-outs.
    x, y = make_xy(8, 20, (2,), 2)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    c = arrays_cfg(tmp_path / "d.npz", val_fraction=0.25, batch_size=12)
    data.check(c)                                   # 20 - 4 test - 4 val = 12
    c.data.batch_size = 13
    with pytest.raises(ConfigError, match="data.batch_size = 13 is not allowed; it must be "
                                          "<= the training set size 12 of arrays"):
        data.check(c)


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


NPZ_CASES = {
    "y_train missing": (dict(x_train=np.ones((3, 2))),
                        r"lacks the arrays y_train \(it holds x_train\)"),
    "x_test alone": (dict(x_train=np.ones((3, 2)), y_train=[0, 1, 0], x_test=np.ones((1, 2))),
                     "has x_test but not y_test; give both"),
    "text inputs": (dict(x_train=np.array([["a", "b"]] * 3), y_train=[0, 1, 0]),
                    "has x_train of dtype <U1; it must hold booleans, integers or real"),
    "1-d inputs": (dict(x_train=np.ones(3), y_train=[0, 1, 0]),
                   r"has x_train of shape \(3,\); it must be \(N, F\)"),
    "2-d labels": (dict(x_train=np.ones((3, 2)), y_train=np.ones((3, 2), int)),
                   r"has y_train of shape \(3, 2\); it must be \(N,\)"),
    "count mismatch": (dict(x_train=np.ones((3, 2)), y_train=[0, 1]),
                       "has 3 examples in x_train but 2 labels in y_train"),
    "empty": (dict(x_train=np.ones((0, 2)), y_train=np.zeros(0, int)),
              "has no examples in x_train"),
    "no features": (dict(x_train=np.ones((3, 0)), y_train=[0, 1, 0]),
                    r"has x_train of shape \(3, 0\), with no features"),
    "feature mismatch": (dict(x_train=np.ones((3, 2)), y_train=[0, 1, 0],
                              x_test=np.ones((2, 5)), y_test=[0, 1]),
                         r"has x_train of shape \(3, 2\) but x_test of shape \(2, 5\)"),
    "NaN": (dict(x_train=np.array([[0, 1.0], [2, np.nan], [3, 4]]), y_train=[0, 1, 0]),
            r"has a missing or NaN value at x_train\[1, 1\]; every feature must be a "
            "finite number"),
    "inf": (dict(x_train=np.ones((3, 2, 2)), y_train=[0, 1, 0], x_test=np.array(
                [[[1.0, 1], [1, np.inf]]]), y_test=[1]),
            r"has an infinite value at x_test\[0, 1, 1\]"),
    "beyond float32": (dict(x_train=np.array([[1.0], [1e39], [2]]), y_train=[0, 1, 0]),
                       r"has the value 1e\+39 at x_train\[1, 0\], beyond float32's range"),
    "negative label": (dict(x_train=np.ones((3, 2)), y_train=[0, -1, 1]),
                       r"has the label -1 at y_train\[1\]; labels must be class indices, "
                       "integers 0..C-1 with C at most the 3 examples"),
    "fractional label": (dict(x_train=np.ones((3, 2)), y_train=[0, 0.5, 1]),
                         r"has the label 0.5 at y_train\[1\], not an integer"),
    "NaN label": (dict(x_train=np.ones((3, 2)), y_train=[0, np.nan, 1]),
                  r"has a missing or NaN label at y_train\[1\]"),
    "label beyond the examples": (dict(x_train=np.ones((3, 2)), y_train=[0, 1, 1],
                                       x_test=np.ones((1, 2)), y_test=[500]),
                                  r"has the label 500 at y_test\[0\]; .*at most the 4 "
                                  r"examples of the file \(regression targets"),
    "one class": (dict(x_train=np.ones((3, 2)), y_train=[0, 0, 0],
                       x_test=np.ones((1, 2)), y_test=[0]),
                  "has only the label 0; a classification dataset needs at least two"),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_npz_refusals(tmp_path, case):
    arrays, message = NPZ_CASES[case]
    path = save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError, match=message) as e:
        data.load(arrays_cfg(path))
    assert str(e.value).startswith(f"The file {path} ")
    assert str(e.value).endswith(".") and str(e.value).count(". ") == 0


def test_npz_that_is_not_an_archive(tmp_path):
    (tmp_path / "zip.npz").write_bytes(b"not a zip file")
    with pytest.raises(ConfigError, match=r"zip.npz is not a readable .npz archive"):
        data.load(arrays_cfg(tmp_path / "zip.npz"))
    # An object array would need unpickling: refused, never unpickled.
    np.savez(tmp_path / "obj.npz", x_train=np.array([{"a": 1}] * 3, dtype=object),
             y_train=[0, 1, 0])
    with pytest.raises(ConfigError, match=r"obj.npz is not a readable .npz archive"):
        data.load(arrays_cfg(tmp_path / "obj.npz"))
    with open(tmp_path / "one.npz", "wb") as f:
        np.save(f, np.ones((3, 2)))
    with pytest.raises(ConfigError, match="one.npz is a single .npy array, not a .npz"):
        data.load(arrays_cfg(tmp_path / "one.npz"))
    x, y = make_xy(9, 10, (2,), 2)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    with pytest.raises(ConfigError, match=r"data.test_fraction = 0.05 is not allowed for the "
                                          r"file .*d.npz, which has no test split: it holds "
                                          r"out floor\(0.05 \* 10\) = 0 of its 10 examples"):
        data.load(arrays_cfg(tmp_path / "d.npz", test_fraction=0.05))


TABLE_CASES = {
    "empty": (b"", "is empty; a CSV file needs a header line"),
    "header only": (b"a,label\n", r"has columns but no examples \(0 rows\)"),
    "no label column": (b"a,b\n1,2\n", "data.label_column = 'label' is not a column of the "
                                       "file .*; its columns are 'a', 'b'"),
    "long first row": (b"a,label\n1,0,3\n2,1\n", "is not a readable CSV file"),
    "long row": (b"a,label\n1,0\n2,1,5\n", "is not a readable CSV file"),
    "mixed column": (b"a,b,label\n1,2,0\n2,?,1\n3,4,0\n",
                     r"has column 'b' mixing numbers with text such as '\?' in row 2"),
    "missing feature": (b"a,b,label\n1,2,0\n2,,1\n3,4,0\n",
                        "has a missing or NaN value at column 'b', row 2"),
    "infinite feature": (b"a,label\n1,0\ninf,1\n", "has an infinite value at column 'a', row 2"),
    "no features": (b"name,label\nx,0\ny,1\n", "has no numeric feature column besides the "
                                               "label column 'label'"),
    "text labels": (b"a,label\n1,cat\n2,dog\n", r"has text labels in column 'label' "
                                                r"\(such as 'cat'\)"),
    "fractional label": (b"a,label\n1,0\n2,1.5\n", "has the label 1.5 at column 'label', "
                                                   "row 2, not an integer"),
    "missing label": (b"a,label\n1,\n2,1\n", "has a missing or NaN label at column 'label', "
                                             "row 1"),
    "negative label": (b"a,label\n1,-1\n2,1\n", "has the label -1 at column 'label', row 1"),
    "huge label": (b"a,label\n1,1e300\n2,1\n", r"has the label 1e\+300 at column 'label', "
                                               "row 1; .* at most the 2 examples"),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_csv_refusals(tmp_path, case):
    content, message = TABLE_CASES[case]
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as e:
        data.load(arrays_cfg(path))
    text = str(e.value)
    assert str(path) in text and text.endswith(".")


def test_parquet_refusals(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"hello")
    with pytest.raises(ConfigError, match="junk.parquet is not a readable parquet file "
                                          r"\(ArrowInvalid"):
        data.load(arrays_cfg(tmp_path / "junk.parquet"))
    pd.DataFrame({"a": ["1", "2"], "b": [1.0, 2.0], "label": [0, 1]}).to_parquet(
        tmp_path / "s.parquet")
    with pytest.raises(ConfigError, match=r"has column 'a' holding numbers stored as text "
                                          r"\(such as '1'\)"):
        data.load(arrays_cfg(tmp_path / "s.parquet"))
    pd.DataFrame({"a": [1.0, 2.0], "label": pd.array([0, None], dtype="Int64")}).to_parquet(
        tmp_path / "n.parquet")
    with pytest.raises(ConfigError, match="has a missing or NaN label at column 'label', "
                                          "row 2"):
        data.load(arrays_cfg(tmp_path / "n.parquet"))


def test_cifar10_refusals(tmp_path):
    c = cfg(name="cifar10", path=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="data.path = '.*nowhere' is not an existing folder; "
                                          "for data.name = 'cifar10' it must hold the folder "
                                          "cifar-10-batches-bin"):
        data.load(c)
    empty = tmp_path / "empty"
    empty.mkdir()
    c.data.path = str(empty)
    with pytest.raises(ConfigError, match=r"holds no CIFAR-10 binary batches; it must hold "
                                          r"the folder cifar-10-batches-bin or directly the "
                                          r"files data_batch_1.bin, .*test_batch.bin"):
        data.check(c)
    (empty / "cifar-10-binary.tar.gz").write_bytes(b"")
    with pytest.raises(ConfigError, match="extract cifar-10-binary.tar.gz there first"):
        data.load(c)
    os.remove(empty / "cifar-10-binary.tar.gz")
    (empty / "cifar-10-batches-py").mkdir()
    with pytest.raises(ConfigError, match="cifar-10-batches-py.* is pickled and is never read"):
        data.load(c)

    def fresh(name):
        folder = tmp_path / name / "cifar-10-batches-bin"
        write_cifar(folder, n_per_batch=2, n_test=2)
        return folder, cfg(name="cifar10", path=str(tmp_path / name))

    folder, c = fresh("partial")
    os.remove(folder / "data_batch_3.bin")
    os.remove(folder / "test_batch.bin")
    with pytest.raises(ConfigError, match=r"has only some of the CIFAR-10 batches \(missing "
                                          r"data_batch_3.bin, test_batch.bin\)"):
        data.load(c)
    folder, c = fresh("short")
    full = (folder / "data_batch_2.bin").read_bytes()
    (folder / "data_batch_2.bin").write_bytes(full[:-1])
    with pytest.raises(ConfigError, match=r"data_batch_2.bin has 6145 bytes, not a multiple "
                                          r"of the 3073-byte CIFAR-10 record"):
        data.load(c)
    folder, c = fresh("zero")
    (folder / "test_batch.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="test_batch.bin is empty"):
        data.load(c)
    folder, c = fresh("label")
    rec = bytearray((folder / "data_batch_5.bin").read_bytes())
    rec[3073] = 10                                   # the second record's label byte
    (folder / "data_batch_5.bin").write_bytes(bytes(rec))
    with pytest.raises(ConfigError, match=r"data_batch_5.bin has label 10 in record 1; "
                                          r"CIFAR-10 labels are 0..9"):
        data.load(c)
