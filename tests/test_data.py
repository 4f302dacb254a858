"""Tests of deadjax.data: datasets, splits, standardisation, files, batches, probe."""

from __future__ import annotations

import gzip
import os
import random
import socket
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deadjax import data
from deadjax.config import ConfigError, default_config


def cfg(**data_fields):
    c = default_config()
    for k, v in data_fields.items():
        c.data[k] = v
    return c


def random_cfg(**kw):
    base = dict(name="random", num_train=200, num_test=50, num_features=6,
                num_classes=3, val_fraction=0.25, seed=7)
    base.update(kw)
    return cfg(**base)


def reference_split(n, val_fraction, seed):
    k = int(np.floor(val_fraction * n))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:k]), np.sort(perm[k:])


def reference_standardise(x_train, *others):
    x_train = x_train.astype(np.float64)
    mean = x_train.mean(0)
    std = x_train.std(0)
    std[std < 1e-6] = 1.0
    return [(a.astype(np.float64) - mean) / std for a in (x_train, *others)]


# --------------------------------------------------------------------------
# Standardisation and splits
# --------------------------------------------------------------------------

def test_standardisation_uses_training_statistics_only():
    ds = data.load(random_cfg())
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_allclose(ds.x_train.mean(0, dtype=np.float64), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(0, dtype=np.float64), 1.0, atol=1e-5)
    assert np.all(np.abs(ds.x_val.mean(0)) > 0)
    assert np.all(np.abs(ds.x_test.mean(0)) > 0)

    # Independently: regenerate the raw data and standardise with train stats.
    rng = np.random.default_rng(7)
    x = rng.random((200, 6), dtype=np.float32)
    y = rng.integers(0, 3, size=200)
    x_test = rng.random((50, 6), dtype=np.float32)
    y_test = rng.integers(0, 3, size=50)
    val, train = reference_split(200, 0.25, 7)
    xt, xv, xs = reference_standardise(x[train], x[val], x_test)
    np.testing.assert_allclose(ds.x_train, xt, atol=1e-5)
    np.testing.assert_allclose(ds.x_val, xv, atol=1e-5)
    np.testing.assert_allclose(ds.x_test, xs, atol=1e-5)
    np.testing.assert_array_equal(ds.y_train, y[train])
    np.testing.assert_array_equal(ds.y_val, y[val])
    np.testing.assert_array_equal(ds.y_test, y_test)
    np.testing.assert_allclose(ds.mean, x[train].astype(np.float64).mean(0), rtol=1e-6)


def test_standardize_off_keeps_raw_values():
    ds = data.load(random_cfg(standardize=False))
    np.testing.assert_array_equal(ds.mean, 0.0)
    np.testing.assert_array_equal(ds.std, 1.0)
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() < 1.0
    assert ds.x_test.min() >= 0.0 and ds.x_test.max() < 1.0
    assert ds.y_train.min() >= 0 and ds.y_train.max() < 3
    assert ds.x_train.shape == (150, 6) and ds.x_test.shape == (50, 6)
    assert ds.num_classes == 3


def test_split_sizes_and_empty_validation():
    ds = data.load(random_cfg(val_fraction=0.1, num_train=105))
    assert ds.x_val.shape == (10, 6) and ds.x_train.shape == (95, 6)
    ds0 = data.load(random_cfg(val_fraction=0.0))
    assert ds0.x_val.shape == (0, 6) and ds0.y_val.shape == (0,)
    assert ds0.x_val.dtype == np.float32 and ds0.y_val.dtype == np.int32
    assert ds0.x_train.shape == (200, 6)
    # The split depends on data.seed, and the cache on the data fields.
    other = data.load(random_cfg(seed=8))
    assert not np.array_equal(other.x_train, data.load(random_cfg()).x_train)
    assert data.load(random_cfg()) is data.load(random_cfg(batch_size=3, order="shared"))


def test_load_dataset_public_api_and_read_only():
    splits = data.load_dataset(random_cfg())
    assert set(splits) == {"x_train", "y_train", "x_val", "y_val", "x_test", "y_test"}
    assert all(isinstance(v, np.ndarray) for v in splits.values())
    with pytest.raises(ValueError):
        splits["x_train"][0, 0] = 1.0


# --------------------------------------------------------------------------
# MNIST-1D
# --------------------------------------------------------------------------

def test_mnist1d_shapes_determinism_and_no_network(monkeypatch):
    c = cfg(name="mnist1d", val_fraction=0.1, seed=0)
    ds = data.load(c)
    assert ds.x_train.shape == (3600, 40) and ds.x_val.shape == (400, 40)
    assert ds.x_test.shape == (1000, 40) and ds.y_test.shape == (1000,)
    assert ds.num_classes == 10 and ds.name == "mnist1d"
    assert set(np.unique(ds.y_train)) == set(range(10))
    np.testing.assert_allclose(ds.x_train.mean(0, dtype=np.float64), 0.0, atol=1e-5)

    # Regenerate from scratch with the network blocked: same arrays, and the
    # global RNG states are left as they were.
    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d generation tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    np.random.seed(123)
    random.seed(123)
    before_np, before_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    data.clear_cache()
    again = data.load(c)
    assert again is not ds
    assert np.random.random() == before_np and random.random() == before_py
    for k, v in ds.splits().items():
        np.testing.assert_array_equal(v, getattr(again, k))
    # val_fraction = 0 gives the published 4000 training examples in order.
    full = data.load(cfg(name="mnist1d", val_fraction=0.0, standardize=False))
    assert full.x_train.shape == (4000, 40)
    raw = data._mnist1d_raw()
    np.testing.assert_allclose(full.x_train, raw["x"].astype(np.float32))
    np.testing.assert_array_equal(full.y_train, raw["y"])


# --------------------------------------------------------------------------
# MNIST / Fashion-MNIST files
# --------------------------------------------------------------------------

def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, np.uint8)
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">i", d) for d in arr.shape)
    return head + arr.tobytes()


def make_images(seed, n_train=12, n_test=5):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    x[:, 0, :] = 0            # constant border pixels: std 0 -> 1
    x_test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=n_train).astype(np.uint8)
    y_test = rng.integers(0, 10, size=n_test).astype(np.uint8)
    return x, y, x_test, y_test


def write_idx(folder, arrays, compressed=True):
    os.makedirs(folder, exist_ok=True)
    for base, arr in zip(data.IDX_FILES.values(), arrays):
        payload = idx_bytes(arr)
        if compressed:
            with gzip.open(os.path.join(folder, base + ".gz"), "wb") as f:
                f.write(payload)
        else:
            with open(os.path.join(folder, base), "wb") as f:
                f.write(payload)


def check_images(ds, arrays, val_fraction, seed):
    x, y, x_test, y_test = arrays
    val, train = reference_split(len(y), val_fraction, seed)
    flat = x.reshape(len(x), -1).astype(np.float64) / 255.0
    flat_test = x_test.reshape(len(x_test), -1).astype(np.float64) / 255.0
    xt, xv, xs = reference_standardise(flat[train], flat[val], flat_test)
    np.testing.assert_allclose(ds.x_train, xt, atol=1e-5)
    np.testing.assert_allclose(ds.x_val, xv, atol=1e-5)
    np.testing.assert_allclose(ds.x_test, xs, atol=1e-5)
    np.testing.assert_array_equal(ds.y_train, y[train])
    np.testing.assert_array_equal(ds.y_val, y[val])
    np.testing.assert_array_equal(ds.y_test, y_test)
    assert ds.x_train.shape[1] == 784 and ds.num_classes == 10
    assert np.all(ds.std[:28] == 1.0)          # constant first row of pixels
    # Without standardisation the values are the written pixels / 255.
    return flat, flat_test


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("compressed", [True, False])
def test_idx_files(tmp_path, name, compressed):
    arrays = make_images(1 if compressed else 2)
    write_idx(tmp_path, arrays, compressed=compressed)
    c = cfg(name=name, path=str(tmp_path), val_fraction=0.25, seed=3, batch_size=4)
    data.check(c)
    ds = data.load(c)
    assert ds.name == name
    flat, flat_test = check_images(ds, arrays, 0.25, 3)
    raw = data.load(cfg(name=name, path=str(tmp_path), val_fraction=0.0, standardize=False))
    np.testing.assert_allclose(raw.x_train, flat, atol=1e-7)
    np.testing.assert_allclose(raw.x_test, flat_test, atol=1e-7)


@pytest.mark.parametrize("name,fname", [("mnist", "mnist.npz"),
                                        ("fashion_mnist", "fashion-mnist.npz")])
def test_keras_npz(tmp_path, name, fname):
    arrays = make_images(4)
    x, y, x_test, y_test = arrays
    np.savez(tmp_path / fname, x_train=x, y_train=y.astype(np.int64),
             x_test=x_test, y_test=y_test.astype(np.int64))
    c = cfg(name=name, path=str(tmp_path), val_fraction=0.25, seed=5)
    check_images(data.load(c), arrays, 0.25, 5)


def test_dataset_subfolders_share_one_path(tmp_path):
    m, f = make_images(6), make_images(7)
    write_idx(tmp_path / "mnist", m)
    write_idx(tmp_path / "fashion_mnist", f, compressed=False)
    cm = cfg(name="mnist", path=str(tmp_path), val_fraction=0.0)
    cf = cfg(name="fashion_mnist", path=str(tmp_path), val_fraction=0.0)
    check_images(data.load(cm), m, 0.0, 0)
    check_images(data.load(cf), f, 0.0, 0)


def test_missing_folder_and_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte") as e:
        data.load(cfg(name="mnist", path=str(missing)))
    assert "nowhere" in str(e.value) and "data.path" in str(e.value)
    with pytest.raises(ConfigError, match="mnist.npz"):
        data.check(cfg(name="mnist", path=str(tmp_path)))
    # Only some IDX files: the missing ones are named.
    write_idx(tmp_path, make_images(0))
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ConfigError, match="t10k-labels-idx1-ubyte"):
        data.load(cfg(name="fashion_mnist", path=str(tmp_path)))
    with pytest.raises(ConfigError, match="data.path"):
        data.check(cfg(name="mnist", path=""))


def test_corrupt_files(tmp_path):
    arrays = make_images(0)
    # Bad magic number.
    write_idx(tmp_path / "a", arrays)
    bad = bytearray(idx_bytes(arrays[0]))
    bad[2] = 0x0D
    with gzip.open(tmp_path / "a" / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes(bad))
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte.gz.*magic"):
        data.load(cfg(name="mnist", path=str(tmp_path / "a")))
    # Truncated data (uncompressed), and a truncated gzip stream.
    write_idx(tmp_path / "b", arrays, compressed=False)
    full = idx_bytes(arrays[2])
    (tmp_path / "b" / "t10k-images-idx3-ubyte").write_bytes(full[:-100])
    with pytest.raises(ConfigError, match="t10k-images-idx3-ubyte.*truncated"):
        data.load(cfg(name="mnist", path=str(tmp_path / "b")))
    write_idx(tmp_path / "c", arrays)
    gz = (tmp_path / "c" / "train-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "c" / "train-labels-idx1-ubyte.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(ConfigError, match="train-labels-idx1-ubyte.gz"):
        data.load(cfg(name="mnist", path=str(tmp_path / "c")))
    # Labels out of range.
    y_bad = arrays[1].copy()
    y_bad[0] = 11
    write_idx(tmp_path / "d", (arrays[0], y_bad, arrays[2], arrays[3]))
    with pytest.raises(ConfigError, match="train-labels-idx1-ubyte.gz.*labels outside"):
        data.load(cfg(name="mnist", path=str(tmp_path / "d")))
    # Image/label count mismatch.
    write_idx(tmp_path / "e", (arrays[0], arrays[1][:-1], arrays[2], arrays[3]))
    with pytest.raises(ConfigError, match="disagree"):
        data.load(cfg(name="mnist", path=str(tmp_path / "e")))
    # An npz that needs pickle is refused, not unpickled; a non-zip npz too.
    (tmp_path / "f").mkdir()
    np.savez(tmp_path / "f" / "mnist.npz", x_train=np.array([{"a": 1}], dtype=object),
             y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
    with pytest.raises(ConfigError, match="mnist.npz"):
        data.load(cfg(name="mnist", path=str(tmp_path / "f")))
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "mnist.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ConfigError, match="mnist.npz"):
        data.load(cfg(name="mnist", path=str(tmp_path / "g")))


def test_check_batch_size_against_training_set():
    data.check(random_cfg(batch_size=150))
    data.check(random_cfg(batch_size=0))
    with pytest.raises(ConfigError, match=r"data.batch_size = 151 .*<= the training set size 150"):
        data.check(random_cfg(batch_size=151))
    with pytest.raises(ConfigError, match="data.batch_size = 3601"):
        data.check(cfg(name="mnist1d", batch_size=3601, val_fraction=0.1))


# --------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------

N, B = 23, 5
NB = N // B


def batches(order, key=None, shared=None, steps=3 * NB, n=N, b=B):
    return np.stack([np.asarray(data.batch_indices(
        s, num_train=n, batch_size=b, order=order, member_key=key, shared_key=shared))
        for s in range(steps)])


def test_shuffle_covers_each_example_once_per_epoch():
    idx = batches("shuffle", key=jax.random.PRNGKey(0))
    assert idx.dtype == np.int32 and idx.shape == (3 * NB, B)
    epochs = idx.reshape(3, NB * B)
    for e in epochs:
        assert len(np.unique(e)) == NB * B and e.min() >= 0 and e.max() < N
    assert not np.array_equal(epochs[0], epochs[1])
    other = batches("shuffle", key=jax.random.PRNGKey(1))
    assert not np.array_equal(idx, other)
    # Exactly divisible: every example exactly once per epoch.
    full = batches("shuffle", key=jax.random.PRNGKey(2), n=20, b=5, steps=8).reshape(2, 20)
    for e in full:
        np.testing.assert_array_equal(np.sort(e), np.arange(20))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 23, 96, 1000, 4000, 8192, 8193, 60000])
def test_shuffled_indices_is_a_permutation_of_every_size(n):
    for seed in (0, 1):
        idx = np.asarray(data.shuffled_indices(jax.random.PRNGKey(seed), jnp.arange(n), n))
        np.testing.assert_array_equal(np.sort(idx), np.arange(n))
    # Evaluated at a few positions it agrees with the whole permutation.
    whole = np.asarray(data.shuffled_indices(jax.random.PRNGKey(0), jnp.arange(n), n))
    some = np.asarray([n // 2, n - 1, 0])
    np.testing.assert_array_equal(
        np.asarray(data.shuffled_indices(jax.random.PRNGKey(0), jnp.asarray(some), n)),
        whole[some])


@pytest.mark.parametrize("n", [8, 23, 100])
def test_shuffled_orders_are_uniform_over_keys(n):
    """Over 4,000 keys, pi(p) is uniform over [0, n) at every position p, and
    the neighbours (pi(0), pi(1)) are uniform over the n (n - 1) ordered pairs
    (n = 8) or their difference over the n - 1 non-zero values: Pearson's
    chi-square against uniform counts, p-values above 1e-3 (the keys are
    fixed, so the test is deterministic; four Feistel rounds fail it)."""
    from scipy import stats
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(4000))
    perms = np.asarray(jax.jit(jax.vmap(
        lambda k: data.shuffled_indices(k, jnp.arange(n), n)))(keys))
    counts = np.stack([np.bincount(perms[:, p], minlength=n) for p in range(min(n, 16))])
    assert stats.chisquare(counts.ravel()).pvalue > 1e-3
    if n == 8:
        pairs = np.bincount(perms[:, 0] * n + perms[:, 1], minlength=n * n).reshape(n, n)
        assert pairs.trace() == 0
        assert stats.chisquare(pairs[~np.eye(n, dtype=bool)]).pvalue > 1e-3
    diff = np.bincount((perms[:, 1] - perms[:, 0]) % n, minlength=n)
    assert diff[0] == 0 and stats.chisquare(diff[1:]).pvalue > 1e-3


def test_a_batch_costs_o_batch_not_o_dataset():
    """The batch program has no sort and no array of the dataset's size: its
    work does not depend on num_train (60,000 here)."""
    n, b = 60_000, 128
    jaxpr = jax.make_jaxpr(lambda k, s: data.batch_indices(
        s, num_train=n, batch_size=b, order="shuffle", member_key=k))(
        jax.random.PRNGKey(0), jnp.int32(5))
    eqns = []

    def walk(j):
        for e in j.eqns:
            eqns.append(e)
            for sub in jax.extend.core.jaxprs_in_params(e.params):
                walk(sub)
    walk(jaxpr.jaxpr)
    assert not [e for e in eqns if e.primitive.name == "sort"]
    sizes = {d for e in eqns for v in e.outvars for d in getattr(v.aval, "shape", ())}
    assert max(sizes) <= b


def test_shared_is_identical_across_members():
    shared = data.shared_key(random_cfg())
    a = batches("shared", key=jax.random.PRNGKey(0), shared=shared)
    b = batches("shared", key=jax.random.PRNGKey(1), shared=shared)
    np.testing.assert_array_equal(a, b)
    c = batches("shared", shared=data.shared_key(random_cfg(seed=8)))
    assert not np.array_equal(a, c)
    # The shared key depends on data.seed only, not on the member seed.
    cfg2 = random_cfg()
    cfg2.seed = 99
    np.testing.assert_array_equal(data.shared_key(cfg2), shared)


def test_sequential_matches_greydanus_slicing():
    x = np.arange(N)
    idx = batches("sequential", steps=20)
    for step in range(20):
        bix = (step * B) % N
        ref = x[bix:bix + B]                       # Greydanus's train.py
        np.testing.assert_array_equal(idx[step][: len(ref)], ref)
        wrapped = np.concatenate([x, x])[bix:bix + B]   # wrap past the end
        np.testing.assert_array_equal(idx[step], wrapped)


def test_sequential_no_overflow_for_large_sets():
    n, b = 3_000_000, 1000               # n * b > 2**31
    for step in (0, 1, 2999, 3000, 10**7 + 3):
        got = np.asarray(data.batch_indices(step, num_train=n, batch_size=b,
                                            order="sequential"))
        start = (step * b) % n
        np.testing.assert_array_equal(got, (start + np.arange(b)) % n)
    f = jax.jit(lambda s: data.batch_indices(s, num_train=n, batch_size=b,
                                             order="sequential"))
    np.testing.assert_array_equal(np.asarray(f(10**7 + 3)),
                                  ((10**7 + 3) * b % n + np.arange(b)) % n)


def test_full_batch():
    for order in data.ORDERS:
        for bs in (0, N):
            idx = data.batch_indices(7, num_train=N, batch_size=bs, order=order,
                                     member_key=jax.random.PRNGKey(0),
                                     shared_key=jax.random.PRNGKey(1))
            np.testing.assert_array_equal(idx, np.arange(N))
    with pytest.raises(ValueError):
        data.batch_indices(0, num_train=N, batch_size=N + 1, order="shuffle",
                           member_key=jax.random.PRNGKey(0))


@pytest.mark.parametrize("order", ["shuffle", "shared", "sequential"])
def test_vmap_and_jit_equal_per_member_calls(order):
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    shared = jax.random.PRNGKey(11)

    def one(step, key):
        return data.batch_indices(step, num_train=N, batch_size=B, order=order,
                                  member_key=key, shared_key=shared)

    f = jax.jit(jax.vmap(one, in_axes=(None, 0)))
    for step in (0, 3, NB, 2 * NB + 1):
        got = np.asarray(f(jnp.int32(step), keys))
        want = np.stack([np.asarray(one(step, k)) for k in keys])
        np.testing.assert_array_equal(got, want)
    # Inside a scan with a traced step.
    def body(carry, step):
        return carry, jax.vmap(one, in_axes=(None, 0))(step, keys)
    _, scanned = jax.lax.scan(body, 0, jnp.arange(6, dtype=jnp.int32))
    np.testing.assert_array_equal(np.asarray(scanned[4]), np.asarray(f(jnp.int32(4), keys)))


def test_typed_keys_work():
    key = jax.random.key(0)
    idx = data.batch_indices(4, num_train=N, batch_size=B, order="shuffle", member_key=key)
    assert idx.shape == (B,) and idx.dtype == jnp.int32


# --------------------------------------------------------------------------
# Probe batch
# --------------------------------------------------------------------------

def test_probe_indices():
    c = random_cfg()
    c.diagnostics.probe_size = 64
    idx = data.probe_indices(c)
    assert idx.shape == (64,)
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < 150
    c2 = random_cfg()
    c2.diagnostics.probe_size = 64
    c2.seed = 12345                       # the member seed does not matter
    np.testing.assert_array_equal(data.probe_indices(c2), idx)
    c3 = random_cfg(seed=8)
    c3.diagnostics.probe_size = 64
    assert not np.array_equal(data.probe_indices(c3), idx)
    big = random_cfg()
    big.diagnostics.probe_size = 10_000
    np.testing.assert_array_equal(data.probe_indices(big), np.arange(150))
    batch = data.probe_batch(c)
    np.testing.assert_array_equal(batch, data.load(c).x_train[idx])
    assert batch.dtype == np.float32 and batch.shape == (64, 6)
