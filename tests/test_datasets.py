"""Own datasets: data.name = "cifar10" (binary batches), read from small files
the tests write; values read equal the values written, every refusal is one
sentence naming the file, and it trains and evaluates end to end."""

from __future__ import annotations

import os

import numpy as np
import pytest

import deadjax
from deadjax import data, runner
from deadjax.config import ConfigError, default_config, validate
from tests.conftest import tiny_config



def cfg(**data_fields):
    c = default_config()
    for k, v in data_fields.items():
        c.data[k] = v
    return c


def reference_split(n, val_fraction, seed):
    k = int(np.floor(val_fraction * n))
    perm = np.random.default_rng(seed).permutation(n)
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


def _write_cifar10(tmp_path):
    write_cifar(tmp_path / "cifar" / "cifar-10-batches-bin")
    return dict(name="cifar10", path=str(tmp_path / "cifar"))


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



def test_end_to_end_cifar10(tmp_path):
    _train(tmp_path, **_write_cifar10(tmp_path))


def test_cifar10_config_refusals():
    with pytest.raises(ConfigError, match="data.path = '' is not allowed for data.name = "
                                          "'cifar10'; give the folder"):
        validate(cfg(name="cifar10"))
    with pytest.raises(ConfigError, match="data.path = '' is not allowed"):
        data.check(cfg(name="cifar10"))
    with pytest.raises(ConfigError, match="data.name = 'cifar' is not allowed"):
        validate(cfg(name="cifar"))


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
