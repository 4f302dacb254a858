"""The XLA-written eigenvalue and singular-value routines against numpy.linalg
(in float64), and the CPU diagnostics program free of LAPACK custom calls.

Tolerance: both routines are backward stable, so in float32 every eigenvalue
(singular value) is within a small multiple of eps * ||A||_2 of the exact one,
eps = 1.19e-7. The tests allow 2e-6 * ||A||_2 (17 eps), the bound the LAPACK
route was held to (tests/test_metrics.py); measured errors are <= 4e-7."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deadjax import linalg
from tests.conftest import compiled_for, device_data, init_members, tiny_config

TOL = 2e-6

svdvals = jax.jit(linalg.xla_svdvals)       # compiled once per shape
eigvalsh = jax.jit(linalg.xla_eigvalsh)


def _with_singular_values(rng, a, b, s):
    """An (a, b) matrix with the singular values ``s`` (len min(a, b))."""
    u = np.linalg.qr(rng.normal(size=(a, len(s))))[0]
    v = np.linalg.qr(rng.normal(size=(b, len(s))))[0]
    return ((u * s) @ v.T).astype(np.float32)


def _svd_cases():
    rng = np.random.default_rng(3)
    cases = {
        "random 16x16": rng.normal(size=(16, 16)),
        "random 9x21": rng.normal(size=(9, 21)),
        "random 40x24": rng.normal(size=(40, 24)),
        "tall 1024x128": rng.normal(size=(1024, 128)),
        "graded columns 33x20": rng.normal(size=(33, 20)) * np.logspace(0, -6, 20),
        "ill-conditioned 64x48 (cond 1e7)": _with_singular_values(rng, 64, 48,
                                                                  np.logspace(0, -7, 48)),
        "rank 5 of 1024x128": _with_singular_values(rng, 1024, 128, [2.5] * 5 + [0] * 123),
        "rank 3 of 20x30": rng.normal(size=(20, 3)) @ rng.normal(size=(3, 30)),
        "repeated singular values 24x24": _with_singular_values(rng, 24, 24,
                                                                [3.0] * 12 + [1.0] * 12),
        "one zero column 12x6": np.c_[rng.normal(size=(12, 5)), np.zeros(12)],
        "relu layer 256x32": np.maximum(rng.normal(size=(256, 32)) @ rng.normal(size=(32, 32)),
                                        0),
        "1x1": [[-3.0]], "1x5": rng.normal(size=(1, 5)), "7x1": rng.normal(size=(7, 1)),
        "2x2": rng.normal(size=(2, 2)), "3x2": rng.normal(size=(3, 2)),
        "large scale 10x8": 1e15 * rng.normal(size=(10, 8)),
        "small scale 10x8": 1e-15 * rng.normal(size=(10, 8)),
    }
    return {k: np.asarray(v, np.float32) for k, v in cases.items()}


SVD_CASES = _svd_cases()


@pytest.mark.parametrize("name", list(SVD_CASES))
def test_svdvals_against_numpy(name):
    m = SVD_CASES[name]
    ref = np.linalg.svd(m.astype(np.float64), compute_uv=False)
    got = np.asarray(svdvals(m))
    assert got.shape == ref.shape
    assert np.all(got >= 0) and np.all(np.diff(got) <= 0)          # descending, >= 0
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL * ref[0])


def test_svdvals_rank_deficient_leaves_no_spurious_direction():
    # what the effective rank's numerical zero (sigma_max * max(N, U) * eps) needs
    m = SVD_CASES["rank 5 of 1024x128"]
    got = np.asarray(svdvals(m))
    assert got[5:].max() < 1e-5 * got[0]          # the numerical zero is 1.2e-4 * got[0]


def _symmetric_cases():
    rng = np.random.default_rng(4)
    g = rng.normal(size=(128, 784)).astype(np.float32)
    d = (rng.random(128) > 0.5).astype(np.float32)
    q = np.linalg.qr(rng.normal(size=(40, 40)))[0]
    cases = {
        "gram 128 (784 inputs)": g @ g.T,
        "relu jacobian gram 128 (half the units dead)": (d[:, None] * g) @ (d[:, None] * g).T,
        "indefinite 33": (lambda a: a + a.T)(rng.normal(size=(33, 33))),
        "ill-conditioned 40 (cond 1e7)": (q * np.logspace(0, -7, 40)) @ q.T,
        "clustered 40": (q * np.r_[np.full(20, 2.0), np.full(20, 2.0 + 1e-6)]) @ q.T,
        "identity 16": np.eye(16),
        "rank 2 of 24": (lambda a: a @ a.T)(rng.normal(size=(24, 2))),
        "diagonal 10": np.diag(np.arange(10.0) - 4.0),
        "1x1": [[2.5]], "2x2": [[1.0, 2.0], [2.0, -1.0]], "3x3": (lambda a: a @ a.T)(
            rng.normal(size=(3, 3))),
        "large scale 12": 1e15 * (lambda a: a + a.T)(rng.normal(size=(12, 12))),
    }
    return {k: np.asarray(v, np.float32) for k, v in cases.items()}


SYM_CASES = _symmetric_cases()


@pytest.mark.parametrize("name", list(SYM_CASES))
def test_eigvalsh_against_numpy(name):
    a = SYM_CASES[name]
    ref = np.linalg.eigvalsh(a.astype(np.float64))
    got = np.asarray(eigvalsh(a))
    assert got.shape == ref.shape and np.all(np.diff(got) >= 0)      # ascending
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL * np.abs(ref).max())


def test_eigvalsh_symmetrises_its_input():
    a = np.triu(SYM_CASES["indefinite 33"])
    ref = np.linalg.eigvalsh(((a + a.T) / 2).astype(np.float64))
    np.testing.assert_allclose(eigvalsh(a), ref, rtol=0, atol=TOL * np.abs(ref).max())


def test_zero_and_non_finite_matrices():
    np.testing.assert_array_equal(eigvalsh(np.zeros((5, 5), np.float32)), 0.0)
    np.testing.assert_array_equal(svdvals(np.zeros((9, 4), np.float32)), 0.0)
    np.testing.assert_array_equal(svdvals(np.zeros((4, 9), np.float32)), 0.0)
    bad = np.ones((5, 5), np.float32)
    for value in (np.nan, np.inf):
        bad[2, 3] = bad[3, 2] = value
        assert np.all(np.isnan(eigvalsh(bad)))
        assert np.all(np.isnan(svdvals(np.c_[bad, bad][:4])))


def test_vmapped_equals_one_by_one():
    rng = np.random.default_rng(5)
    ms = rng.normal(size=(2, 3, 9, 4)).astype(np.float32)
    batched = jax.jit(jax.vmap(jax.vmap(linalg.xla_svdvals)))(ms)
    single = np.stack([[svdvals(m) for m in row] for row in ms])
    np.testing.assert_allclose(batched, single, rtol=1e-6, atol=1e-7)
    grams = np.einsum("bij,bkj->bik", ms[0], ms[0])
    np.testing.assert_allclose(jax.jit(jax.vmap(linalg.xla_eigvalsh))(grams),
                               np.stack([eigvalsh(g) for g in grams]), rtol=1e-6, atol=1e-6)


def test_a_stack_of_eigenproblems_equals_each_alone_and_numpy():
    """xla_eigvalsh_stack (tridiagonalised one at a time, bisected together)
    gives each matrix's xla_eigvalsh bit for bit; a non-finite matrix is NaN
    without touching the others; numpy's float64 eigenvalues to ~eps ||a||."""
    rng = np.random.default_rng(11)
    ms = rng.normal(size=(5, 17, 17)).astype(np.float32)
    stack = np.einsum("bij,bkj->bik", ms, ms) - 3 * np.eye(17, dtype=np.float32)
    stack[2] = 0.0
    stack[3, 4, 5] = stack[3, 5, 4] = np.nan
    got = np.asarray(jax.jit(linalg.xla_eigvalsh_stack)(stack))
    for i, a in enumerate(stack):
        np.testing.assert_array_equal(got[i], eigvalsh(a), err_msg=f"matrix {i}")
    assert np.all(got[2] == 0) and np.all(np.isnan(got[3]))
    for i in (0, 1, 4):
        ref = np.linalg.eigvalsh(stack[i].astype(np.float64))
        np.testing.assert_allclose(got[i], ref, rtol=0, atol=4e-7 * np.abs(ref).max())
    np.testing.assert_array_equal(jax.jit(linalg.symmetric_eigenvalues_stack)(stack), got)


def test_upper_eigenvalues_alone_equal_those_of_all():
    """Bisecting only eigenvalues first..n-1 (xla_svdvals takes the upper half
    of the Golub-Kahan matrix's) gives those of the bisection of all n bit for
    bit: each eigenvalue's interval is halved on its own. Checked on the
    Golub-Kahan matrices of random bidiagonals, with zeros and a repeated
    entry, and on a random tridiagonal; and against numpy's float64."""
    rng = np.random.default_rng(12)
    full = jax.jit(linalg._tridiagonal_eigenvalues)
    upper = jax.jit(linalg._tridiagonal_eigenvalues, static_argnames="first")
    for k in (2, 5, 64):
        off = rng.normal(size=(4, 2 * k - 1)).astype(np.float32)
        off[1, ::3] = 0.0
        off[2] = 0.7
        for row in off:
            d = np.zeros(2 * k, np.float32)
            np.testing.assert_array_equal(upper(d, row, first=k), full(d, row)[k:])
            gk = np.diag(row.astype(np.float64), 1) + np.diag(row.astype(np.float64), -1)
            ref = np.linalg.eigvalsh(gk)[k:]
            np.testing.assert_allclose(upper(d, row, first=k), ref, rtol=0,
                                       atol=4e-7 * max(np.abs(ref).max(), 1e-30))
    d, e = rng.normal(size=33).astype(np.float32), rng.normal(size=32).astype(np.float32)
    np.testing.assert_array_equal(upper(d, e, first=20), full(d, e)[20:])


def test_cpu_routes_are_the_xla_ones():
    assert jax.default_backend() == "cpu" and linalg.use_xla_solvers()
    m = SVD_CASES["random 40x24"]
    np.testing.assert_array_equal(jax.jit(linalg.singular_values)(m), svdvals(m))
    a = SYM_CASES["indefinite 33"]
    np.testing.assert_array_equal(jax.jit(linalg.symmetric_eigenvalues)(a), eigvalsh(a))


@pytest.mark.slow
def test_diagnostics_program_has_no_custom_call_on_cpu():
    """A LAPACK custom call in the program can deadlock XLA:CPU's thread pool
    (deadjax.linalg); the program of every diagnostic family has none."""
    cfg = tiny_config(model__norm="layer", model__widths=(10, 10), model__residual=True)
    pop = compiled_for(cfg)
    state = init_members(pop, [cfg] * 2, seeds=[0, 1])
    hlo = pop.chunk.lower(state, device_data(cfg), jnp.int32(0),
                          jnp.bool_(True)).compile().as_text()
    assert "jacobian" in cfg.diagnostics.families and "rank" in cfg.diagnostics.families
    assert not re.findall(r'custom_call_target="([^"]*)"', hlo)


def _top_pair_cases():
    rng = np.random.default_rng(3)
    cases = {"random 20": (rng.normal(size=20), rng.normal(size=19))}
    d, e = rng.normal(size=12), rng.normal(size=11)
    e[6] = 0.0                                      # two decoupled blocks
    cases["split 12"] = (d, e)
    d = np.linspace(0.0, 1.0, 20)
    d[-1] = d[-2] + 1e-3                            # top gap 1e-3 of the norm
    cases["close top 20"] = (d, np.full(19, 1e-4))
    # Lanczos-like: the active leading block, the rest decoupled far below
    d, e = rng.uniform(1, 5, size=21), rng.uniform(0.1, 1, size=20)
    d[8:], e[7:] = -100.0, 0.0
    cases["leading block of 21"] = (d, e)
    return cases


@pytest.mark.parametrize("name", list(_top_pair_cases()))
def test_tridiagonal_top_eigenpair_against_numpy(name):
    """The Lanczos tridiagonal's top eigenpair without LAPACK (bisection, then
    inverse iteration) against numpy.linalg.eigh in float64: eigenvalue within
    3e-7 of ||T||, the vector's residual ||T y - theta y|| within 1e-5 ||T||
    and y the top eigenvector up to sign (|<y, v>| >= 1 - 1e-4), also when the
    next eigenvalue is only 1e-3 ||T|| below."""
    d, e = _top_pair_cases()[name]
    t = np.diag(d) + np.diag(e, 1) + np.diag(e, -1)
    values, vectors = np.linalg.eigh(t)
    norm = np.abs(values).max()
    theta, y = jax.jit(linalg.tridiagonal_top_eigenpair)(jnp.asarray(d, jnp.float32),
                                                          jnp.asarray(e, jnp.float32))
    theta, y = float(theta), np.asarray(y, np.float64)
    assert abs(theta - values[-1]) <= 3e-7 * norm
    np.testing.assert_allclose(np.linalg.norm(y), 1.0, atol=1e-6)
    assert np.linalg.norm(t @ y - theta * y) <= 1e-5 * norm
    assert abs(y @ vectors[:, -1]) >= 1 - 1e-4
