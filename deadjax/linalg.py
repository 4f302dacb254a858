"""Eigenvalues of small symmetric matrices and singular values, for the diagnostics.

Two routes, chosen by the backend (:func:`use_xla_solvers`):

* **CPU: algorithms written in XLA operations** (:func:`xla_eigvalsh`,
  :func:`xla_svdvals`): loops of Householder reflections, matrix-vector
  products and elementwise updates, then bisection. No custom call, so no
  thread pool but XLA's own, and a member's numbers are computed the same
  way whatever the number of devices.
* **GPU and TPU: the backend's batched solvers** (``jnp.linalg.eigvalsh``,
  cuSOLVER on GPUs), as before.

Why not LAPACK on CPU. JAX computes ``eigh`` and ``qr`` on CPU with LAPACK
custom calls (``lapack_ssyevd_ffi``, ``lapack_sgeqrf_ffi``). In jaxlib 0.10.2
and 0.11.0 a call whose batch is worth splitting (more than one matrix of
these sizes) schedules its chunks on XLA:CPU's intra-op thread pool and blocks
the thread that runs it -- a thread of that same pool -- until they are done
(``ParallelBatchMap`` in ``jaxlib/cpu/lapack_kernels.cc``; later open-source
builds run the batch inline, jax commit 859992407d, but nothing here should
depend on which jaxlib is installed). When as many such
calls run at once as the pool has threads, every thread waits for chunks no
thread is left to run, and the program hangs: with the member axis sharded
over four forced CPU devices, the four device programs' ``ssyevd`` calls
occupied all four pool threads (seen with gdb, jaxlib 0.10.2). An unbatched
call runs inline, but a loop over members cannot run on the sharded member
axis without gathering it. Each LAPACK call also enters OpenBLAS, whose own
threads compete with XLA's: on the shared 2-core machine 1024 batched
128 x 128 ``eigvalsh`` took 15-23 s (0.9 s with ``OPENBLAS_NUM_THREADS=1``).

The backend is read at trace time. deadjax compiles every program for the
devices of its mesh, which are the default backend's
(:func:`deadjax.sharding.mesh`), so that is the backend the program runs on.

Cost. These loops are sequential in the matrix size and run on one core.
Solved one matrix at a time (:func:`each`, inside
:func:`deadjax.sharding.map_members`, which takes a device's members in turn),
so that a matrix stays in cache, they take about 0.15 ms per 64 x 64
eigenvalue problem and 1.1 ms for the singular values of a 1024 x 64 matrix
on the 2-core CPU (2-3 times LAPACK's time on a quiet machine); a Householder
step of the QR of a 1024 x 64 matrix takes ~12 us, about the speed of its
matrix-vector product and rank-1 update from the second-level cache. A
blocked (compact WY) QR was tried and ran no faster there; a layout with the
batch in the minor axis ran 5-10 times slower.
On accelerators these loops would be slow (many small kernels), hence the
two routes.

References: G. H. Golub and C. F. Van Loan, *Matrix Computations*, 4th ed.,
Johns Hopkins University Press, 2013 (cited as GVL); T. F. Chan, "An improved
algorithm for computing the singular value decomposition", ACM TOMS 8(1), 1982.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["use_xla_solvers", "each", "symmetric_eigenvalues", "symmetric_eigenvalues_stack",
           "xla_eigvalsh_stack", "singular_values",
           "tridiagonal_top_eigenpair", "xla_eigvalsh", "xla_svdvals"]

# Reflections per loop. A loop of PHASE steps works on the trailing block still
# being reduced, so later loops touch smaller matrices: 4 loops for a 128-wide
# matrix do about half the work of one loop over the whole matrix. Each loop
# adds compile time (about 0.3 s on the 2-core CPU); 16-step loops ran at most
# ~15% faster than 32-step ones and compiled about twice as long.
PHASE = 32


def use_xla_solvers() -> bool:
    """True on CPU: the diagnostics' linear algebra runs as XLA operations
    (:func:`xla_eigvalsh`, :func:`xla_svdvals`) instead of LAPACK."""
    return jax.default_backend() == "cpu"


def each(fn):
    """``fn`` of one matrix (or pytree of arrays) applied along a leading
    axis. On CPU (:func:`use_xla_solvers`) one element after another
    (``lax.map``): the reflections of a single matrix index its rows directly
    and keep it in the core's first-level cache, where a ``vmap`` over a few
    of them strides every step across the batch; measured on the 2-core CPU,
    one at a time took 1.27 s for 8,192 eigenvalue problems of 64 x 64
    (vmap over 8 at a time: 2.8 s) and 2.27 s for the singular values of
    2,048 matrices of 1024 x 64 (vmap over 2: 3.15 s). Elsewhere ``vmap``,
    for the backend's batched solvers."""
    if use_xla_solvers():
        return lambda xs: jax.lax.map(fn, xs)
    return jax.vmap(fn)


def symmetric_eigenvalues(a):
    """Eigenvalues of the symmetric matrix ``a`` (n, n), ascending.

    CPU: :func:`xla_eigvalsh`; elsewhere ``jnp.linalg.eigvalsh`` (cuSOLVER on
    GPUs). Both are backward stable: absolute error ~eps * ||a||_2."""
    if use_xla_solvers():
        return xla_eigvalsh(a)
    return jnp.linalg.eigvalsh(a)


def singular_values(m):
    """Singular values of ``m`` (a, b), descending, min(a, b) of them, with
    absolute error ~eps * sigma_max.

    CPU: :func:`xla_svdvals`. Elsewhere: a non-square matrix is first reduced
    to its square triangular factor (``m = Q R``, or ``m^T = Q R`` when a < b),
    which has the same singular values; those of R (k x k) are the largest k
    eigenvalues of the symmetric Jordan-Wielandt matrix ``[[0, R], [R^T, 0]]``,
    whose eigenvalues are ``+-sigma`` (GVL Sec. 8.6.1). QR and the symmetric
    eigensolver are backward stable -- unlike the Gram matrix ``m^T m``, which
    squares the condition number (spurious singular values ~sqrt(eps) *
    sigma_max, about 3e-4 sigma_max in float32). On GPUs this is used instead
    of ``jnp.linalg.svd`` because batched SVDs are slow there (4096 SVDs of
    128 x 128 took 10.5 s on an H100, this route 0.14 s) and, measured there,
    less accurate in float32 (~1e-5 sigma_max against <= 4e-7 sigma_max).
    """
    if use_xla_solvers():
        return xla_svdvals(m)
    m = _float(m)
    a, b = m.shape
    if a != b:
        m = jax.lax.linalg.qr(m if a > b else m.T, full_matrices=False)[1]
    k = min(a, b)
    # At least 33 rows: on GPUs JAX solves eigenproblems of size <= 32 with
    # batched Jacobi (cuSOLVER syevj), measured at ~4e-6 sigma_max error on an
    # H100, against ~3e-7 for the larger-size solver. The extra zero rows
    # only add eigenvalues 0.
    size = max(2 * k, 33)
    aug = jnp.zeros((size, size), m.dtype)
    aug = aug.at[:k, k:2 * k].set(m).at[k:2 * k, :k].set(m.T)
    ev = jnp.linalg.eigvalsh(aug)            # ascending
    return jnp.clip(ev[::-1][:k], 0.0, None)


def tridiagonal_top_eigenpair(d, e):
    """The largest eigenvalue of the symmetric tridiagonal matrix with
    diagonal ``d`` (n,) and off-diagonal ``e`` (n - 1,), and a unit
    eigenvector of it (sign arbitrary); for the Lanczos method's small
    tridiagonal (:func:`deadjax.metrics.hessian_top_eigenvalue`).

    CPU: bisection on Sturm counts (:func:`_tridiagonal_eigenvalues`, absolute
    error ~eps * ||T||), then inverse iteration (GVL Sec. 8.2.2 and 8.4.2):
    three solves of ``(T - sigma I) x = x_prev`` with ``sigma = theta + 1e-5
    ||T||``, just above the top eigenvalue, so ``T - sigma I`` is negative
    definite and its LDL^T factorisation needs no pivoting
    (:func:`_tridiagonal_solve`). Each solve shrinks the other eigenvectors'
    components by ``1e-5 ||T|| / (gap + 1e-5 ||T||)``: below 1e-6 in all
    after three, for a gap of 1e-3 ||T|| to the next eigenvalue. A
    decoupled block (``e_i = 0``) whose eigenvalues lie below the top one
    gets components that vanish the same way. Elsewhere
    ``jnp.linalg.eigh``'s last eigenpair."""
    d = _float(d)
    e = _float(e).astype(d.dtype)
    n = d.shape[0]
    if not use_xla_solvers():
        t = jnp.diag(d) + jnp.diag(e, 1) + jnp.diag(e, -1)
        values, vectors = jnp.linalg.eigh(t)
        return values[-1], vectors[:, -1]
    if n == 1:
        return d[0], jnp.ones((1,), d.dtype)
    theta = _tridiagonal_eigenvalues(d, e)[-1]
    norm = jnp.max(jnp.abs(d) + jnp.pad(jnp.abs(e), (0, 1)) + jnp.pad(jnp.abs(e), (1, 0)))
    shifted = d - (theta + 1e-5 * jnp.where(norm > 0, norm, 1.0))
    x = jnp.ones_like(d)
    for _ in range(3):
        x = _tridiagonal_solve(shifted, e, x)
        x = x / jnp.linalg.norm(x)
    return theta, x


def _tridiagonal_solve(d, e, b):
    """``x`` with ``T x = b``, T symmetric tridiagonal (diagonal ``d``,
    off-diagonal ``e``) and definite: the LDL^T (Thomas) recurrences without
    pivoting, stable for definite matrices (GVL Sec. 4.3.6)."""
    def forward(carry, row):
        q_prev, y_prev = carry
        d_j, e_prev, b_j = row
        ratio = e_prev / q_prev
        q = d_j - ratio * e_prev
        y = b_j - ratio * y_prev
        return (q, y), (q, y)

    e_prev = jnp.concatenate([jnp.zeros_like(d[:1]), e])
    _, (q, y) = jax.lax.scan(forward, (jnp.ones_like(d[0]), jnp.zeros_like(d[0])),
                             (d, e_prev, b))

    def backward(x_next, row):
        q_j, y_j, e_j = row
        x = (y_j - e_j * x_next) / q_j
        return x, x

    e_next = jnp.concatenate([e, jnp.zeros_like(d[:1])])
    _, x = jax.lax.scan(backward, jnp.zeros_like(d[0]), (q, y, e_next), reverse=True)
    return x


# --------------------------------------------------------------------------
# The XLA route
# --------------------------------------------------------------------------

def xla_eigvalsh(a):
    """Eigenvalues of the symmetric matrix ``a`` (n, n), ascending, in XLA
    operations.

    1. ``a`` is symmetrised, ``(a + a^T) / 2`` (as ``jnp.linalg.eigvalsh``
       does), and scaled by its largest magnitude (undone at the end), so no
       sum of squares below can overflow.
    2. Householder tridiagonalisation ``Q^T a Q = T`` (GVL Algorithm 8.3.1):
       n - 2 reflections, each a matrix-vector product and a symmetric rank-2
       update of the trailing block.
    3. The eigenvalues of T by bisection on Sturm sequence counts (GVL
       Sec. 8.4.1, :func:`_tridiagonal_eigenvalues`), to an absolute
       tolerance of about eps * ||T||.

    Householder reductions are backward stable, so every eigenvalue carries an
    absolute error ~eps * ||a||_2 (measured <= 2e-7 ||a||_2 in float32 for
    n <= 128), as LAPACK's ``ssyevd``. A non-finite entry gives NaN
    everywhere; the zero matrix gives zeros.
    """
    a = _float(a)
    n = a.shape[-1]
    if a.shape != (n, n):
        raise ValueError(f"xla_eigvalsh needs a square matrix, got shape {a.shape}")
    return xla_eigvalsh_stack(a[None])[0]


def xla_eigvalsh_stack(a):
    """:func:`xla_eigvalsh` of each matrix of the stack ``a`` (b, n, n):
    ``(b, n)``, the same numbers. Each matrix is tridiagonalised alone
    (:func:`each`), then the bisections of all of them run together, one
    vectorised loop (measured on the 2-core CPU for 8,192 tridiagonals of
    64 x 64, eight at a time: 0.23 s, one at a time: 0.58 s)."""
    a = _float(a)
    n = a.shape[-1]
    if a.ndim != 3 or a.shape[1:] != (n, n):
        raise ValueError(f"xla_eigvalsh_stack needs a stack of square matrices, got shape "
                         f"{a.shape}")
    a = 0.5 * (a + jnp.swapaxes(a, 1, 2))
    scale = jnp.max(jnp.abs(a), axis=(1, 2))
    unit = a / jnp.where(scale > 0, scale, 1.0)[:, None, None]
    if n == 1:
        ev = unit[:, 0]
    else:
        d, e = jax.lax.map(_tridiagonal, unit)
        ev = jax.vmap(_tridiagonal_eigenvalues)(d, e)
    finite = jnp.all(jnp.isfinite(a), axis=(1, 2))
    return jnp.where(finite[:, None], ev * scale[:, None], jnp.nan)


def symmetric_eigenvalues_stack(a):
    """:func:`symmetric_eigenvalues` of each matrix of the stack ``a`` (b, n,
    n), ``(b, n)``: :func:`xla_eigvalsh_stack` on CPU, elsewhere the
    backend's batched ``jnp.linalg.eigvalsh``."""
    if use_xla_solvers():
        return xla_eigvalsh_stack(a)
    return jnp.linalg.eigvalsh(a)


def xla_svdvals(m):
    """Singular values of ``m`` (a, b), descending, min(a, b) of them, in XLA
    operations.

    1. ``m`` (transposed when a < b, so it has at least as many rows as
       columns) is scaled by its largest magnitude (undone at the end).
    2. A tall matrix is reduced to the triangular factor R of its Householder
       QR (GVL Algorithm 5.2.1), which has its singular values, so the next
       step works on a k x k matrix (R-bidiagonalisation: Chan 1982, GVL
       Sec. 5.4.9).
    3. Householder bidiagonalisation ``U^T R V = B`` (GVL Algorithm 5.4.2),
       B upper bidiagonal with diagonal d and superdiagonal f.
    4. The singular values of B are the non-negative eigenvalues of the
       Golub-Kahan matrix: the 2k x 2k symmetric tridiagonal with zero
       diagonal and off-diagonal ``(d_1, f_1, d_2, f_2, ..., d_k)``, whose
       eigenvalues are ``+-sigma_i`` (GVL Sec. 8.6.1); bisection
       (:func:`_tridiagonal_eigenvalues`) finds the upper k of them.

    Every step is backward stable (the Gram matrix ``m^T m`` is never formed),
    so the absolute error is ~eps * sigma_max, as for LAPACK's SVD: measured
    <= 3e-7 sigma_max in float32, and a 1024 x 128 matrix of rank 5 gets
    spurious singular values ~1e-6 sigma_max. A non-finite entry gives NaN
    everywhere; the zero matrix gives zeros.
    """
    m = _float(m)
    if m.ndim != 2:
        raise ValueError(f"xla_svdvals needs a matrix, got shape {m.shape}")
    x = m if m.shape[0] >= m.shape[1] else m.T
    k = x.shape[1]
    scale = jnp.max(jnp.abs(x))
    x = x / jnp.where(scale > 0, scale, 1.0)
    r = _r_factor(x) if x.shape[0] > k else x
    if k == 1:
        s = jnp.abs(r[0])
    else:
        d, f = _bidiagonal(r)
        off = jnp.concatenate([jnp.stack([d[:-1], f], axis=1).reshape(-1), d[-1:]])
        ev = _tridiagonal_eigenvalues(jnp.zeros(2 * k, x.dtype), off, first=k)
        s = jnp.clip(ev[::-1], 0.0, None)
    return _finite_or_nan(m, s * scale)


# Products in full float32 whatever jax_default_matmul_precision says.
_dot = functools.partial(jnp.dot, precision=jax.lax.Precision.HIGHEST)


def _float(x):
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _finite_or_nan(x, values):
    return jnp.where(jnp.all(jnp.isfinite(x)), values, jnp.nan)


def _phases(steps: int) -> list:
    """``(first step, number of steps)`` of each loop over ``steps`` steps."""
    return [(s, min(PHASE, steps - s)) for s in range(0, steps, PHASE)]


def _householder(x, k, idx):
    """The reflection ``H = I - tau v v^T`` with ``H x = beta e_k`` for the
    entries of ``x`` at positions >= k (those before k are ignored); ``v`` is
    0 before k and 1 at k. GVL Algorithm 5.1.1 with LAPACK's normalisation
    (``slarfg``): ``beta = -sign(x_k) ||x||``, ``tau = (beta - x_k) / beta``,
    ``v = (x - beta e_k) / (x_k - beta)``, the sign chosen so nothing cancels;
    no reflection (``tau = 0``, ``beta = x_k``) when x is zero after k.
    ``x`` must be scaled (|x| <= 1), ``idx`` is ``arange(len(x))``."""
    alpha = x[k]
    tail = jnp.where(idx > k, x, 0.0)
    sigma = _dot(tail, tail)
    trivial = sigma == 0
    norm = jnp.sqrt(alpha * alpha + sigma)
    beta = jnp.where(alpha > 0, -norm, norm)
    v = jnp.where(idx == k, 1.0, tail / jnp.where(trivial, 1.0, alpha - beta))
    tau = jnp.where(trivial, 0.0, (beta - alpha) / jnp.where(trivial, 1.0, beta))
    return v, tau, jnp.where(trivial, alpha, beta)


def _tridiagonal(a):
    """Diagonal (n,) and off-diagonal (n - 1,) of a tridiagonal matrix similar
    to the symmetric ``a`` (n >= 2): GVL Algorithm 8.3.1. Reflection k maps
    the part of column k below the subdiagonal to zero and updates the
    trailing block by ``A <- A - v w^T - w v^T`` with ``p = tau A v`` and
    ``w = p - (tau p^T v / 2) v``. Column k is read as row k (symmetry)."""
    diagonal, off = [], []
    for _, count in _phases(a.shape[-1] - 2):
        idx = jnp.arange(a.shape[-1])

        def step(k, carry, idx=idx):
            b, e = carry
            v, tau, beta = _householder(b[k], k + 1, idx)
            p = jnp.where(idx > k, tau * _dot(b, v), 0.0)
            w = p - (0.5 * tau * _dot(p, v)) * v
            b = b - jnp.outer(v, w) - jnp.outer(w, v)
            return b, e.at[k].set(beta)

        a, e = jax.lax.fori_loop(0, count, step, (a, jnp.zeros_like(a[0, :count])))
        diagonal.append(jnp.diagonal(a)[:count])
        off.append(e)
        a = a[count:, count:]
    diagonal.append(jnp.diagonal(a))          # the last 2 x 2 block
    off.append(a[1:, 0])
    return jnp.concatenate(diagonal), jnp.concatenate(off)


def _tridiagonal_eigenvalues(d, e, first: int = 0):
    """Eigenvalues, ascending, of the symmetric tridiagonal matrix with
    diagonal ``d`` (n,) and off-diagonal ``e`` (n - 1,), by bisection (GVL
    Sec. 8.4.1), all n at once; with ``first``, only the eigenvalues
    ``first, ..., n - 1`` (ascending order), each bisected exactly as when
    all are (the intervals are independent), so the same numbers.

    The number of eigenvalues below x is the number of negative pivots of
    the LDL^T factorisation of T - x I (Sylvester's law of inertia):
    ``q_1 = d_1 - x``, ``q_j = d_j - x - e_{j-1}^2 / q_{j-1}``. A pivot
    smaller than ``pivmin = tiny * max(1, max e^2)`` in magnitude is replaced
    by ``-pivmin``, which keeps the count correct and ``e^2 / q`` finite (as
    LAPACK's ``slaebz`` does). Each eigenvalue's interval starts as the
    Gershgorin interval of T, widened by ``2 n eps ||T||``, and is halved
    nmant + 2 times (25 in float32), down to ~eps * ||T||. The recurrence is
    a loop over j, unrolled 4 times from n = 65 on (128 x 128 Golub-Kahan
    matrices: 15% faster than no unrolling, more ran no faster and compiled
    longer); not unrolled up to n = 64, where unrolling ran no faster (16
    matrices of 64 x 64 a member, 512 members: 0.20 s either way) and
    compiled twice as long (0.8 s against 0.4 s)."""
    n = d.shape[0]
    finfo = jnp.finfo(d.dtype)
    e2 = jnp.concatenate([jnp.zeros_like(d[:1]), e * e])        # e2[j] = e_{j-1}^2
    radius = jnp.pad(jnp.abs(e), (0, 1)) + jnp.pad(jnp.abs(e), (1, 0))   # Gershgorin
    low, high = jnp.min(d - radius), jnp.max(d + radius)
    pivmin = finfo.tiny * jnp.maximum(1.0, jnp.max(e2))
    slack = 2 * n * finfo.eps * jnp.maximum(jnp.abs(low), jnp.abs(high)) + 4 * pivmin
    index = jnp.arange(first, n)

    def count_below(x):
        def pivot(j, carry):
            q, count = carry
            q = d[j] - x - e2[j] / q
            q = jnp.where(jnp.abs(q) < pivmin, -pivmin, q)
            return q, count + (q < 0)

        start = (jnp.ones_like(x), jnp.zeros_like(x, jnp.int32))  # e2[0] = 0: q_1 = d_1 - x
        return jax.lax.fori_loop(0, n, pivot, start, unroll=4 if n > 64 else 1)[1]

    def halve(_, interval):
        lo, hi = interval
        mid = 0.5 * (lo + hi)
        below = count_below(mid) > index           # eigenvalue i lies below mid
        return jnp.where(below, lo, mid), jnp.where(below, mid, hi)

    lo = jnp.broadcast_to(low - slack, index.shape)
    hi = jnp.broadcast_to(high + slack, index.shape)
    lo, hi = jax.lax.fori_loop(0, finfo.nmant + 2, halve, (lo, hi))
    return 0.5 * (lo + hi)


def _r_factor(x):
    """The upper-triangular factor R (k, k) of the Householder QR of ``x``
    (n, k), n > k: GVL Algorithm 5.2.1, Q not formed. It works on ``x^T``
    so that the column being reduced is a contiguous row."""
    xt = x.T
    k = xt.shape[0]
    rows = []
    for first, count in _phases(k):
        idx = jnp.arange(xt.shape[1])
        below = jnp.arange(xt.shape[0])

        def step(j, b, idx=idx, below=below):
            v, tau, beta = _householder(b[j], j, idx)
            w = jnp.where(below > j, tau * _dot(b, v), 0.0)
            b = b - jnp.outer(w, v)
            row = jnp.where(idx < j, b[j], jnp.where(idx == j, beta, 0.0))
            return jax.lax.dynamic_update_slice(b, row[None], (j, 0))

        xt = jax.lax.fori_loop(0, count, step, xt)
        # rows first .. first + count - 1 of R, from column `first` on
        rows.append(jnp.pad(xt[:, :count].T, ((0, 0), (first, 0))))
        xt = xt[count:, count:]
    return jnp.concatenate(rows, axis=0)


def _bidiagonal(r):
    """Diagonal (k,) and superdiagonal (k - 1,) of an upper bidiagonal matrix
    with the singular values of the square ``r`` (k >= 2): GVL Algorithm
    5.4.2. Step j reflects column j below the diagonal to zero (from the
    left), then row j right of the superdiagonal (from the right)."""
    diagonal, sup = [], []
    for _, count in _phases(r.shape[0] - 1):
        idx = jnp.arange(r.shape[0])

        def step(j, carry, idx=idx):
            b, d, f = carry
            v, tau, beta = _householder(b[:, j], j, idx)
            b = b - jnp.outer(v, jnp.where(idx > j, tau * _dot(v, b), 0.0))
            u, tau, gamma = _householder(b[j], j + 1, idx)
            b = b - jnp.outer(jnp.where(idx > j, tau * _dot(b, u), 0.0), u)
            return b, d.at[j].set(beta), f.at[j].set(gamma)

        zeros = jnp.zeros_like(r[0, :count])
        r, d, f = jax.lax.fori_loop(0, count, step, (r, zeros, zeros))
        diagonal.append(d)
        sup.append(f)
        r = r[count:, count:]
    diagonal.append(r[0])                    # the last 1 x 1 block
    return jnp.concatenate(diagonal), jnp.concatenate(sup)
