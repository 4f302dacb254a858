"""Tests of deadjax.tasks against independent NumPy references written here.

The references re-derive every quantity from its documented definition: the
teacher's thresholds by counting -1 weights, its output by a float64 NumPy
forward pass, the flipping bits by a Python loop that flips one bit per task
boundary, with the flip choices drawn from the documented keys.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deadjax import tasks as T

KEY = jax.random.PRNGKey(3)
M, F, H = T.DEFAULT_NUM_BITS, T.DEFAULT_NUM_FLIPPING, T.TEACHER_HIDDEN


# --------------------------------------------------------------------------
# NumPy references
# --------------------------------------------------------------------------

def np_thresholds(w1, beta, reference=False):
    """theta_i = beta (m + 1) - S_i, S_i as documented (paper / authors' code)."""
    w1 = np.asarray(w1, np.float64)
    m = w1.shape[1] - 1
    if reference:
        s = (m - w1[:, :m].sum(1) + w1[:, m]) / 2.0
    else:
        s = np.array([sum(1 for w in row if w == -1) for row in w1], np.float64)
    return beta * (m + 1) - s


def np_teacher(teacher, x, theta=None):
    """LTU activations and output of the teacher, float64."""
    w1 = np.asarray(teacher["w1"], np.float64)
    theta = np.asarray(teacher["theta"], np.float64) if theta is None else theta
    pre = np.asarray(x, np.float64) @ w1.T
    ltu = (pre > theta).astype(np.float64)
    return ltu, ltu @ np.asarray(teacher["w2"], np.float64) + float(teacher["b2"])


def np_flipping_bits(key, t_max, f):
    """Bits of tasks 0..t_max by a loop: one documented flip per boundary."""
    k = jax.random.fold_in(key, T._FLIP_STREAM)
    bits = np.array(jax.random.bernoulli(jax.random.fold_in(k, 0), 0.5, (f,)), bool)
    choice = jax.jit(lambda s: jax.random.randint(jax.random.fold_in(k, s), (), 0, f))
    choices = [int(choice(s)) for s in range(1, t_max + 1)]
    out = [bits.copy()]
    for c in choices:
        bits[c] = not bits[c]
        out.append(bits.copy())
    return np.array(out, np.float32)


def random_binary_inputs(n, m, seed=0):
    x = np.random.default_rng(seed).integers(0, 2, size=(n, m + 1)).astype(np.float32)
    x[:, -1] = 1.0
    return x


# --------------------------------------------------------------------------
# Task index and keys
# --------------------------------------------------------------------------

def test_task_index():
    steps = np.arange(0, 50)
    for every in (1, 3, 10):
        got = T.task_index(steps, every)
        assert got.dtype == jnp.int32
        np.testing.assert_array_equal(got, steps // every)
        jitted = jax.jit(lambda s: T.task_index(s, every))
        assert int(jitted(jnp.int32(29))) == 29 // every
        np.testing.assert_array_equal(jax.vmap(jitted)(jnp.asarray(steps)), steps // every)
    with pytest.raises(ValueError):
        T.task_index(5, 0)


def test_task_keys_depend_on_seed_and_kind_only():
    keys = {(s, k): np.asarray(T.task_key(s, k)) for s in (0, 1) for k in T.TASKS}
    assert len({v.tobytes() for v in keys.values()}) == len(keys)
    np.testing.assert_array_equal(T.task_key(1, "shuffled_labels"),
                                  keys[(1, "shuffled_labels")])
    with pytest.raises(ValueError):
        T.task_key(0, "split_mnist")


# --------------------------------------------------------------------------
# Permutations
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [T.input_permutation, T.label_permutation])
def test_permutations(fn):
    n = 10
    jitted = jax.jit(lambda t: fn(KEY, t, n))          # traced t
    perms = np.stack([np.asarray(jitted(t)) for t in range(8)])
    assert perms.dtype == np.int32 and perms.shape == (8, n)
    for p in perms:                                    # each is a permutation
        np.testing.assert_array_equal(np.sort(p), np.arange(n))
    np.testing.assert_array_equal(perms[0], np.arange(n))   # task 0: identity
    for t in range(1, 8):                              # the documented formula
        np.testing.assert_array_equal(
            perms[t], jax.random.permutation(jax.random.fold_in(KEY, t), n))
    for a, b in itertools.combinations(range(8), 2):   # tasks differ
        assert not np.array_equal(perms[a], perms[b])
    for t in (0, 5):                                   # eager = jit, deterministic
        np.testing.assert_array_equal(fn(KEY, t, n), perms[t])
    assert not np.array_equal(fn(jax.random.PRNGKey(4), 5, n), perms[5])
    np.testing.assert_array_equal(jax.vmap(jitted)(jnp.arange(8)), perms)
    steps = jnp.arange(0, 80, 10)                      # t from a traced step
    np.testing.assert_array_equal(
        jax.vmap(lambda s: fn(KEY, T.task_index(s, 10), n))(steps), perms)


def test_permutations_applied():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    y = rng.integers(0, 4, size=50)
    p = np.asarray(T.input_permutation(KEY, 2, 6))
    np.testing.assert_array_equal(np.asarray(jnp.asarray(x)[..., p]), x[:, p])
    q = np.asarray(T.label_permutation(KEY, 2, 4))
    z = q[y]
    # A renaming of the classes: same partition and class sizes, new names.
    for c in range(4):
        assert np.all(z[y == c] == q[c])
    np.testing.assert_array_equal(np.bincount(z, minlength=4)[q], np.bincount(y, minlength=4))


# --------------------------------------------------------------------------
# Slowly-changing regression: teacher
# --------------------------------------------------------------------------

@pytest.mark.parametrize("reference", [False, True])
def test_teacher_matches_numpy(reference):
    te = T.regression_teacher(KEY, M, reference_thresholds=reference)
    assert te["w1"].shape == (H, M + 1) and te["theta"].shape == (H,)
    assert te["w2"].shape == (H,) and te["b2"].shape == ()
    for k in ("w1", "w2", "b2"):
        assert set(np.unique(te[k])) <= {-1.0, 1.0}
    assert set(np.unique(te["w1"])) == {-1.0, 1.0}
    theta = np_thresholds(te["w1"], T.TEACHER_BETA, reference)
    np.testing.assert_allclose(te["theta"], theta, rtol=0, atol=1e-5)

    x = random_binary_inputs(400, M)
    ltu, y = np_teacher(te, x, theta)
    assert 0.0 < ltu.mean() < 1.0                      # some LTUs fire, not all
    np.testing.assert_array_equal(T.teacher_output(te, x), y)
    np.testing.assert_array_equal(jax.jit(T.teacher_output)(te, x), y)
    np.testing.assert_array_equal(T.teacher_output(te, x[7]), y[7])

    np.testing.assert_array_equal(T.regression_teacher(KEY, M)["w1"],
                                  T.regression_teacher(KEY, M)["w1"])
    assert not np.array_equal(T.regression_teacher(jax.random.PRNGKey(9), M)["w1"], te["w1"])


def test_teacher_ltu_fires_on_matching_bits():
    """Default rule: LTU i fires iff more than beta (m+1) input bits match w1[i]."""
    te = T.regression_teacher(KEY, M)
    w1 = np.asarray(te["w1"])
    x = random_binary_inputs(300, M, seed=1)
    ltu, _ = np_teacher(te, x)
    matches = ((x[:, None, :] == 1) == (w1[None] == 1)).sum(-1)      # (N, H)
    np.testing.assert_array_equal(ltu, matches > T.TEACHER_BETA * (M + 1))
    # The authors' rule agrees for bias weight +1 and needs 17 matches for -1.
    ref = T.regression_teacher(KEY, M, reference_thresholds=True)
    ltu_ref, _ = np_teacher(ref, x)
    plus = w1[:, M] == 1
    np.testing.assert_array_equal(ltu_ref[:, plus], ltu[:, plus])
    np.testing.assert_array_equal(ltu_ref[:, ~plus], matches[:, ~plus] >= 17)


# --------------------------------------------------------------------------
# Slowly-changing regression: flipping bits
# --------------------------------------------------------------------------

def test_flipping_bits_match_numpy_loop():
    ref = np_flipping_bits(KEY, 40, F)
    got = np.stack([np.asarray(T.flipping_bits(KEY, t, M, F)) for t in range(41)])
    assert got.dtype == np.float32 and got.shape == (41, F)
    assert set(np.unique(got)) <= {0.0, 1.0}
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(np.abs(np.diff(got, axis=0)).sum(1), 1)  # one flip
    assert 0 < got[0].sum() < F
    np.testing.assert_array_equal(T.flipping_bits(KEY, 17, M, F), got[17])  # deterministic
    assert not np.array_equal(T.flipping_bits(jax.random.PRNGKey(4), 0, M, F), got[0])


def test_flipping_bits_traced_and_across_chunks():
    t_max = 2 * T._FLIP_CHUNK + 5
    ref = np_flipping_bits(KEY, t_max, F)
    jitted = jax.jit(lambda t: T.flipping_bits(KEY, t, M, F))
    ts = np.array([0, 1, 2, 31, T._FLIP_CHUNK - 1, T._FLIP_CHUNK, T._FLIP_CHUNK + 1,
                   2 * T._FLIP_CHUNK, t_max])
    for t in ts:
        np.testing.assert_array_equal(jitted(jnp.int32(t)), ref[t])
    np.testing.assert_array_equal(jax.vmap(jitted)(jnp.asarray(ts)), ref[ts])
    steps = jnp.asarray(ts) * 7 + 3                    # t = step // 7 inside jit
    np.testing.assert_array_equal(
        jax.jit(jax.vmap(lambda s: T.flipping_bits(KEY, T.task_index(s, 7), M, F)))(steps),
        ref[ts])


def test_flipping_bits_edge_cases():
    assert T.flipping_bits(KEY, 5, M, 0).shape == (0,)
    assert T.flipping_bits(KEY, 5, 3, 3).shape == (3,)
    with pytest.raises(ValueError):
        T.flipping_bits(KEY, 0, 3, 4)


# --------------------------------------------------------------------------
# Slowly-changing regression: batches
# --------------------------------------------------------------------------

def test_regression_batch():
    te = T.regression_teacher(KEY, M)
    sample_key = jax.random.PRNGKey(11)
    b = 512
    for t in (0, 6):
        x, y = T.regression_batch(KEY, te, sample_key, t, b)
        assert x.shape == (b, M + 1) and x.dtype == jnp.float32
        assert y.shape == (b,) and y.dtype == jnp.float32
        x, y = np.asarray(x), np.asarray(y)
        assert set(np.unique(x)) == {0.0, 1.0}
        np.testing.assert_array_equal(x[:, -1], 1.0)                       # bias bit last
        np.testing.assert_array_equal(x[:, :F], np.broadcast_to(
            np.asarray(T.flipping_bits(KEY, t, M, F)), (b, F)))            # flipping bits
        rnd = x[:, F:M]
        assert np.all((rnd.mean(0) > 0.35) & (rnd.mean(0) < 0.65))        # random bits vary
        assert len({r.tobytes() for r in rnd}) > 20
        np.testing.assert_array_equal(y, np_teacher(te, x)[1])             # targets
    x2, _ = T.regression_batch(KEY, te, jax.random.PRNGKey(12), 6, b)
    assert not np.array_equal(np.asarray(x2)[:, F:M], rnd)                 # fresh per key

    @jax.jit
    def step_batch(step, k):
        return T.regression_batch(KEY, te, jax.random.fold_in(k, step),
                                  T.task_index(step, 10), 8)

    xj, yj = step_batch(jnp.int32(65), sample_key)
    np.testing.assert_array_equal(np.asarray(xj)[:, :F], np.broadcast_to(
        np.asarray(T.flipping_bits(KEY, 6, M, F)), (8, F)))
    np.testing.assert_array_equal(yj, np_teacher(te, np.asarray(xj))[1])
    xs, ys = jax.vmap(step_batch, in_axes=(None, 0))(
        jnp.int32(65), jax.random.split(sample_key, 3))                  # vmap over members
    assert xs.shape == (3, 8, M + 1) and ys.shape == (3, 8)
    np.testing.assert_array_equal(xs[1], step_batch(jnp.int32(65),
                                                    jax.random.split(sample_key, 3)[1])[0])
