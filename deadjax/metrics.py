"""Pure metric functions: classification/regression metrics and per-layer diagnostics.

Every function here works on ONE member (one model) and is a pure function of
arrays: no logging, no Python-side data-dependent control flow, no boolean
indexing, static output shapes. They are therefore safe under ``jax.jit`` and
``jax.vmap``; the trainer vmaps them over the member axis of a population.
Python branches appear only on static quantities (shapes, ``num_classes``,
``num_bins``).

Notation (DESIGN.md, "Definitions"): on the probe batch of ``N`` inputs, one
hidden layer with ``U`` units has pre-activations ``z`` (N, U), post-activations
``h = phi(z)`` (N, U) and activation derivatives ``dphi = phi'(z)`` (N, U).

Numerics. Inputs are promoted to at least float32 (bf16 activations are
up-cast). No function here uses a matrix multiplication whose precision depends
on ``jax_default_matmul_precision`` (singular values come from
:mod:`deadjax.linalg`, the correlation from sums), so the diagnostics do not
change with ``train.precision``.

See docs/metrics.md for every definition, its source and a worked example.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from deadjax import linalg

__all__ = [
    "cross_entropy", "accuracy", "f1_macro", "roc_auc_binary", "auc_roc_ovr",
    "mse", "r2",
    "masked_mean", "layer_fraction", "pooled_fraction",
    "dead_units", "negative_units", "dormant_scores", "dormant_units", "saturation_fraction",
    "persistent", "revived",
    "preact_stats", "preact_moments", "preact_percentiles", "percentiles", "q_value", "c_value",
    "jacobian_mean_singular_value", "singular_values", "representation_singular_values",
    "effective_rank",
    "output_constant", "histogram",
    "frobenius_norm", "update_ratio", "grad_norm_ratio", "dormant_metric_name",
    "hessian_vector_product", "hessian_top_eigenvalue",
]

def _float(x):
    """``x`` as a JAX array of a floating dtype at least as wide as float32."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _nan(dtype=jnp.float32):
    return jnp.array(jnp.nan, dtype)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def masked_mean(x, mask, axis=None):
    """Mean of ``x`` over the entries where ``mask`` is True.

    ``sum(where(mask, x, 0)) / sum(mask)``; entries outside the mask never
    contribute (not even a NaN they may hold). Returns NaN where the mask is
    empty (the mean of nothing is undefined). Static shapes, no boolean
    indexing.
    """
    x = _float(x)
    mask = jnp.broadcast_to(jnp.asarray(mask, bool), x.shape)
    total = jnp.sum(jnp.where(mask, x, 0.0), axis=axis)
    count = jnp.sum(mask, axis=axis).astype(x.dtype)
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)


def layer_fraction(mask_bool):
    """Share of True entries of a boolean mask, as float32 (mean of the mask)."""
    return jnp.mean(jnp.asarray(mask_bool, bool).astype(jnp.float32))


def pooled_fraction(masks):
    """Share of True entries over several masks pooled together.

    For ``dead_fraction/all``: (number of dead hidden units in all layers) /
    (number of hidden units in all layers) -- a unit-weighted mean, not the
    mean of the per-layer fractions. NaN for an empty list (no hidden layer).
    """
    masks = [jnp.asarray(m, bool).reshape(-1) for m in masks]
    if not masks:
        return _nan()
    return layer_fraction(jnp.concatenate(masks))


def frobenius_norm(x):
    """Frobenius (Euclidean) norm of all entries of ``x``: sqrt(sum x^2)."""
    x = _float(x)
    return jnp.sqrt(jnp.sum(x * x))


def update_ratio(w_after, w_before):
    """||W_after - W_before||_F / ||W_before||_F: relative size of one update.

    Returns inf where ``W_before`` is all zero and the update is not, NaN
    where both are zero (0/0). The trainer reports NaN at step 0 (no update
    yet), see docs/metrics.md.
    """
    w_after, w_before = _float(w_after), _float(w_before)
    return frobenius_norm(w_after - w_before) / frobenius_norm(w_before)


def grad_norm_ratio(first, last):
    """``(ratio, undefined)``: the first over the last hidden layer's kernel
    gradient norm, ``ratio = ||dL/dW_0||_F / ||dL/dW_last||_F`` (DESIGN.md
    "Gradient flow": << 1 vanishing, >> 1 exploding towards the input), made
    total for a finite network:

    * ``last > 0``: the quotient;
    * ``last = 0 < first``: ``+inf`` (IEEE x/0; e.g. a dead last hidden layer
      bypassed by a residual connection);
    * ``first = last = 0``: ``0`` (no gradient reaches the first layer: a fully
      dead last hidden layer, whose zero deltas stop everything below it), and
      ``undefined = 1`` marks this case (0/0) so it can be told from a true,
      tiny ratio; ``undefined = 0`` everywhere else.

    Both values survive a mean (pandas drops the NaN 0/0 used to give). A
    non-finite norm (a diverged member) still gives the IEEE quotient (NaN
    or inf) and ``undefined = 0``.
    """
    first, last = _float(first), _float(last)
    both_zero = (first == 0) & (last == 0)
    ratio = jnp.where(both_zero, 0.0, first / jnp.where(both_zero, 1.0, last))
    return ratio, both_zero.astype(ratio.dtype)


def dormant_metric_name(tau, layer):
    """The DESIGN.md column name ``dormant_ratio_{tau:g}/layer_L``."""
    return f"dormant_ratio_{float(tau):g}/layer_{layer}"


# ---------------------------------------------------------------------------
# Classification and regression metrics
# ---------------------------------------------------------------------------

def cross_entropy(logits, labels):
    """Mean softmax cross-entropy over the batch.

    ``mean_i [ -log softmax(logits_i)[labels_i] ]`` via
    ``optax.softmax_cross_entropy_with_integer_labels`` (numerically stable
    log-sum-exp). ``logits`` (N, C), ``labels`` integer (N,).
    """
    logits = _float(logits)
    labels = jnp.asarray(labels).astype(jnp.int32)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits, labels):
    """Share of inputs whose arg-max logit equals the label.

    Ties in the logits go to the lowest class index (``argmax`` semantics, as
    NumPy).
    """
    pred = jnp.argmax(logits, axis=-1)
    return jnp.mean((pred == jnp.asarray(labels)).astype(jnp.float32))


def f1_macro(logits, labels, num_classes: int):
    """Macro-averaged F1 score of the arg-max predictions.

    Per class c: ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``; the macro F1 is
    the unweighted mean of F1_c over the classes that occur in ``labels`` OR in
    the predictions -- the label set of
    ``sklearn.metrics.f1_score(y, y_pred, average='macro')``
    (``unique_labels(y_true, y_pred)``). A class present only in the
    predictions has TP = 0 and contributes F1 = 0, as in scikit-learn (whose
    zero-division value is then irrelevant: 0/FP = 0). Classes in neither are
    left out (masked mean). Labels must lie in ``[0, num_classes)``.
    """
    pred = jnp.argmax(logits, axis=-1)
    labels = jnp.asarray(labels)
    y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)      # (N, C)
    p = jax.nn.one_hot(pred, num_classes, dtype=jnp.float32)        # (N, C)
    tp = jnp.sum(y * p, axis=0)
    fp = jnp.sum((1.0 - y) * p, axis=0)
    fn = jnp.sum(y * (1.0 - p), axis=0)
    denom = 2.0 * tp + fp + fn
    present = denom > 0          # the class occurs in labels or predictions
    f1 = jnp.where(present, 2.0 * tp / jnp.where(present, denom, 1.0), 0.0)
    return masked_mean(f1, present)


def roc_auc_binary(scores, positive):
    """Area under the ROC curve of ``scores`` for the boolean target ``positive``.

    The Mann-Whitney statistic: the probability that a random positive scores
    higher than a random negative, tied (positive, negative) pairs counted 1/2:

        AUC = (1 / (P Q)) sum_{i pos} [ #{j neg: s_j < s_i} + 1/2 #{j neg: s_j = s_i} ]

    which equals the trapezoidal area under the ROC curve (Hanley & McNeil
    1982; what ``sklearn.metrics.roc_auc_score`` computes). Computed in
    O(N log N): the negatives' scores are sorted (positives replaced by +inf)
    and each positive's counts come from ``searchsorted`` left/right. The sum
    ``sum_i (lt_i + le_i) = 2 U`` is accumulated in integers, exactly, as long
    as it fits the integer type (N < 65,536 with 32-bit integers; any N with
    ``jax_enable_x64``); beyond that it is summed in floating point.

    Returns NaN if there are no positives or no negatives (undefined), or if a
    score is not finite.
    """
    s = _float(scores).reshape(-1)
    pos = jnp.asarray(positive, bool).reshape(-1)
    n = s.shape[0]
    n_pos = jnp.sum(pos)
    n_neg = n - n_pos
    neg_sorted = jnp.sort(jnp.where(pos, jnp.inf, s))
    lt = jnp.searchsorted(neg_sorted, s, side="left")    # negatives with s_j < s_i
    le = jnp.searchsorted(neg_sorted, s, side="right")   # negatives with s_j <= s_i
    both = lt + le
    int_max = jnp.iinfo(both.dtype).max
    if n * n // 2 < int_max:        # static: 2U <= 2 P Q <= N^2 / 2 fits exactly
        two_u = jnp.sum(jnp.where(pos, both, 0)).astype(s.dtype)
        denom = 2.0 * n_pos.astype(s.dtype) * n_neg.astype(s.dtype)
        auc = two_u / jnp.maximum(denom, 1.0)
    else:                           # float accumulation of per-positive terms in [0, 1]
        term = both.astype(s.dtype) / (2.0 * jnp.maximum(n_neg, 1).astype(s.dtype))
        auc = jnp.sum(jnp.where(pos, term, 0.0)) / jnp.maximum(n_pos, 1).astype(s.dtype)
    valid = (n_pos > 0) & (n_neg > 0) & jnp.all(jnp.isfinite(s))
    return jnp.where(valid, auc, jnp.nan)


def auc_roc_ovr(logits, labels, num_classes: int):
    """One-vs-rest macro ROC AUC of the softmax probabilities.

    For each class c, :func:`roc_auc_binary` of the scores
    ``softmax(logits)[:, c]`` against the target ``labels == c``; the macro
    AUC is the unweighted mean over the classes that have both positives and
    negatives in ``labels``. This is
    ``sklearn.metrics.roc_auc_score(y, softmax(logits), multi_class='ovr',
    average='macro')`` whenever every class occurs; where one does not,
    scikit-learn raises and we leave that class out. NaN if no class
    qualifies (a single-class batch) or the logits are not finite.

    Note: AUC does not decompose over batches; call it on the whole
    evaluation set.
    """
    probs = jax.nn.softmax(_float(logits), axis=-1)
    labels = jnp.asarray(labels)
    classes = jnp.arange(num_classes)
    per_class = jax.vmap(lambda c: roc_auc_binary(probs[:, c], labels == c))(classes)
    n_pos = jnp.sum(labels[None, :] == classes[:, None], axis=1)
    has_both = (n_pos > 0) & (n_pos < labels.shape[0])
    auc = masked_mean(per_class, has_both)
    return jnp.where(jnp.all(jnp.isfinite(probs)), auc, jnp.nan)


def mse(pred, target):
    """Mean squared error over all entries: ``mean((pred - target)^2)``."""
    d = _float(pred) - _float(target)
    return jnp.mean(d * d)


def r2(pred, target):
    """Coefficient of determination, averaged uniformly over outputs.

    Per output k: ``R2_k = 1 - SS_res,k / SS_tot,k`` with
    ``SS_res,k = sum_i (y_ik - yhat_ik)^2`` and
    ``SS_tot,k = sum_i (y_ik - mean_i y_ik)^2``; the result is ``mean_k R2_k``
    (``sklearn.metrics.r2_score(y, yhat)``, ``multioutput='uniform_average'``).
    A constant target (SS_tot = 0) gives R2_k = 1 if predicted exactly, else 0
    (scikit-learn's ``force_finite=True``). 1-D inputs are one output.
    """
    pred, target = _float(pred), _float(target)
    if target.ndim == 1:
        target = target[:, None]
    if pred.ndim == 1:
        pred = pred[:, None]
    ss_res = jnp.sum((target - pred) ** 2, axis=0)
    # Shift by the first row before centring (same value mathematically): a
    # constant column then gives SS_tot = 0 exactly, where float32 round-off
    # in the mean would leave a tiny SS_tot and a huge negative R2.
    shifted = target - target[0:1]
    ss_tot = jnp.sum((shifted - jnp.mean(shifted, axis=0)) ** 2, axis=0)
    ok = ss_tot > 0
    r2k = jnp.where(ok, 1.0 - ss_res / jnp.where(ok, ss_tot, 1.0),
                    jnp.where(ss_res == 0, 1.0, 0.0))
    return jnp.mean(r2k)


# ---------------------------------------------------------------------------
# Dead, dormant and saturated units
# ---------------------------------------------------------------------------

def dead_units(dphi, max_derivative, threshold=0.0):
    """Boolean (U,): which units of a layer are dead on the probe batch.

    Unit j is dead iff ``|phi'(z_j(x))| <= threshold * max_derivative`` for
    EVERY probe input x. With the default ``threshold = 0`` this is the exact
    notion: no gradient reaches the unit's incoming weights for any probe
    input (``phi'(z_j(x)) = 0`` for all x; for ReLU, with ``relu'(0) = 0`` as
    in JAX, that is ``z_j(x) <= 0`` for all x). For activations whose
    derivative never vanishes (tanh, sigmoid, leaky ReLU, ...) no unit is
    dead at threshold 0; a small positive threshold (``diagnostics.
    dead_threshold``) makes the notion usable ("effectively dead").
    ``max_derivative`` is ``sup |phi'|`` of the activation (1 for ReLU/tanh,
    1/4 for sigmoid). Source: DESIGN.md "Dead unit"; Lu et al. 2019 (dying
    ReLU), Glorot & Bengio 2010 (saturation).
    """
    dphi = _float(dphi)
    bound = jnp.asarray(threshold, dphi.dtype) * jnp.asarray(max_derivative, dphi.dtype)
    return jnp.all(jnp.abs(dphi) <= bound, axis=0)


def negative_units(z):
    """Boolean (U,): units whose pre-activation is ``<= 0`` on EVERY probe input.

    ``z`` (N, U) is what enters phi (after normalisation). A dead-unit notion
    that works for every activation: the unit sits in its negative region for
    the whole probe batch. For ReLU (``relu'(0) = 0``) it is exactly
    :func:`dead_units` at threshold 0 (``phi'(z) = 0`` iff ``z <= 0``); for
    leaky ReLU, PReLU, ELU, SELU, GELU, SiLU, softplus, ... whose derivative
    does not vanish there, such a unit is not dead (it still gets the gradient
    ``phi'(z) δ``, e.g. ``slope · δ``) but computes (almost) a linear or
    constant function of its input on the probe batch and is stuck on the
    activation's non-rectifying side. Source: the ReLU definition of
    DESIGN.md "Dead unit" (``z_j(x) <= 0`` for all x; Lu et al. 2019),
    read on z for any activation. A NaN entry is not ``<= 0``.
    """
    return jnp.all(_float(z) <= 0, axis=0)


def dormant_scores(h):
    """ReDo normalised activation scores s (U,) of Sokar et al. 2023, eq. 1.

    ``s_j = E_x|h_j(x)| / ((1/U) sum_k E_x|h_k(x)|)`` with E_x the mean over the
    probe batch. If the layer mean is 0 (every activation is exactly 0) every
    score is defined as 0, so every unit is dormant for every tau >= 0. (The
    authors' code divides by ``mean + 1e-9``, which agrees in that case; we
    divide exactly otherwise.)
    """
    a = jnp.mean(jnp.abs(_float(h)), axis=0)
    m = jnp.mean(a)
    return jnp.where(m > 0, a / jnp.where(m > 0, m, 1.0), 0.0)


def dormant_units(h, tau):
    """Boolean (U,): tau-dormant units, ``s_j <= tau`` (Sokar et al. 2023, Def. 3.1).

    ``s`` from :func:`dormant_scores`. tau = 0 marks the units whose
    activation is exactly 0 on every probe input.
    """
    return dormant_scores(h) <= jnp.asarray(tau)


def saturation_fraction(dphi, max_derivative, threshold):
    """Share of (input, unit) pairs with ``|phi'(z)| < threshold * max_derivative``.

    A bounded activation sits near its asymptotes where its derivative is a
    tiny fraction of its maximum (Glorot & Bengio 2010, Sec. 3, who track
    saturated sigmoid/tanh units). Default threshold
    ``diagnostics.saturation_threshold = 0.01``: for tanh (max phi' = 1)
    that is |z| > about 3.0 (|tanh z| > 0.995). For ReLU the flat side (z <= 0)
    counts as saturated.
    """
    dphi = _float(dphi)
    bound = jnp.asarray(threshold, dphi.dtype) * jnp.asarray(max_derivative, dphi.dtype)
    return jnp.mean((jnp.abs(dphi) < bound).astype(dphi.dtype))


def persistent(dead_now, dead_before):
    """Share of the layer's units dead now AND at the previous evaluation."""
    return layer_fraction(jnp.asarray(dead_now, bool) & jnp.asarray(dead_before, bool))


def revived(dead_now, dead_before):
    """Share of the layer's units dead at the previous evaluation and alive now."""
    return layer_fraction(jnp.asarray(dead_before, bool) & ~jnp.asarray(dead_now, bool))


# ---------------------------------------------------------------------------
# Signal propagation
# ---------------------------------------------------------------------------

def preact_moments(z):
    """``{"mean", "std"}`` of all (input, unit) pre-activations of a layer,
    pooled; the population standard deviation (ddof = 0, as ``numpy.std``)."""
    z = _float(z).reshape(-1)
    return {"mean": jnp.mean(z), "std": jnp.std(z)}


def _sortable_keys(v):
    """int32 keys ordered as the float32 values ``v`` (-0 before +0). XLA:CPU
    sorts int32 about 4x faster than float32, whose comparator orders NaN."""
    bits = jax.lax.bitcast_convert_type(v.astype(jnp.float32), jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _from_sortable_keys(k):
    bits = jnp.where(k < 0, k ^ jnp.int32(0x7FFFFFFF), k)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _first_over(counts, ranks):
    """For each rank r of ``ranks`` (T,): the first bin i of ``counts`` (M,)
    whose cumulative count exceeds r, and r less the counts before bin i. In
    two levels (rows of 256 bins), so no scan runs over all M bins."""
    m = counts.shape[-1]
    width = 256 if m % 256 == 0 else m
    rows = counts.reshape(-1, width)
    sums = rows.sum(axis=1)
    row_cum = jnp.cumsum(sums)
    row = jnp.sum(row_cum[None, :] <= ranks[:, None], axis=1)
    ranks = ranks - (row_cum[row] - sums[row])
    within = jnp.cumsum(rows[row], axis=1)                       # (T, width)
    col = jnp.sum(within <= ranks[:, None], axis=1)
    before = jnp.take_along_axis(within, col[:, None], axis=1)[:, 0] - rows[row, col]
    return row * width + col, ranks - before


def _select_keys(keys, ranks):
    """The order statistics ``sort(keys)[ranks]`` of int32 sortable keys
    (:func:`_sortable_keys`) without sorting: a radix selection on the top,
    then the bottom 16 bits of the keys (as order-preserving unsigned values),
    each a counting pass (one scatter-add) over the keys. Exact. ``ranks``
    (T,) int32 in [0, n)."""
    u = jax.lax.bitcast_convert_type(keys, jnp.uint32) ^ jnp.uint32(0x80000000)
    high = (u >> 16).astype(jnp.int32)
    low = (u & 0xFFFF).astype(jnp.int32)
    bins = 1 << 16
    counts = jnp.zeros((bins,), jnp.int32).at[high].add(1)
    bucket, rest = _first_over(counts, ranks)
    t = ranks.shape[0]
    # One histogram of the low bits per distinct bucket: rank i uses the slot of
    # the first rank in its bucket; a key in some rank's bucket goes to that slot.
    same = bucket[:, None] == bucket[None, :]
    slot = jnp.argmax(same, axis=1)
    match = high[:, None] == bucket[None, :]                        # (n, T)
    where = jnp.where(jnp.any(match, axis=1), jnp.argmax(match, axis=1) * bins + low, t * bins)
    low_counts = jnp.zeros((t * bins,), jnp.int32).at[where].add(1, mode="drop")
    low_counts = low_counts.reshape(t, bins)[slot]
    col = jax.vmap(lambda c, r: _first_over(c, r[None])[0][0])(low_counts, rest)
    value = (bucket.astype(jnp.uint32) << 16) | col.astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(value ^ jnp.uint32(0x80000000), jnp.int32)


# From this many entries on, float32 percentiles select instead of sorting.
SELECT_FROM = 4096


def percentiles(values, qs):
    """``numpy.percentile(values, qs)`` (method ``linear``) of all entries:
    NaN if any entry is NaN, as numpy. In float32 through int32 keys
    (:func:`_sortable_keys`): sorted below :data:`SELECT_FROM` entries, else
    the two order statistics each q needs are selected
    (:func:`_select_keys`, two counting passes instead of a sort: 65,536
    entries in ~0.6 ms against ~2.7 ms on the 2-core CPU); the same values."""
    v = _float(values).reshape(-1)
    n = v.shape[0]
    pos = jnp.asarray(qs, v.dtype) / 100.0 * (n - 1)
    below = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, n - 1)
    above = jnp.clip(below + 1, 0, n - 1)
    t = pos - below
    if v.dtype == jnp.float32 and n >= SELECT_FROM:
        k = below.shape[0]
        picked = _from_sortable_keys(_select_keys(_sortable_keys(v),
                                                  jnp.concatenate([below, above])))
        a, b = picked[:k], picked[k:]
    else:
        if v.dtype == jnp.float32:
            ordered = _from_sortable_keys(jnp.sort(_sortable_keys(v)))
        else:  # float64 under jax_enable_x64
            ordered = jnp.sort(v)
        a, b = ordered[below], ordered[above]
    # numpy's _lerp: a + (b - a) t, or b - (b - a)(1 - t) from t = 0.5 on.
    out = jnp.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)
    return jnp.where(jnp.any(jnp.isnan(v)), jnp.nan, out)


def preact_percentiles(z):
    """``{"p15", "p50", "p85"}``: the 15th, 50th and 85th percentiles of all
    (input, unit) pre-activations of a layer, pooled, with linear
    interpolation (``numpy.percentile``'s default). The six order statistics
    they need are selected exactly (:func:`percentiles`), not sorted."""
    p15, p50, p85 = percentiles(z, (15.0, 50.0, 85.0))
    return {"p15": p15, "p50": p50, "p85": p85}


def preact_stats(z):
    """Statistics of all (input, unit) pre-activations of a layer, pooled.

    Returns ``{"mean", "std", "p15", "p50", "p85"}``: :func:`preact_moments`
    and :func:`preact_percentiles` -- the statistics Ioffe & Szegedy 2015 plot
    in Fig. 1(b, c).
    """
    return {**preact_moments(z), **preact_percentiles(z)}


def q_value(z):
    """Length of the pre-activation signal, ``q = E_x[(1/U) sum_j z_j(x)^2]``.

    Poole et al. 2016, Sec. 2 ("the propagation of a single point":
    ``q^l = (1/N_l) sum_i (h_i^l)^2`` of the pre-activations ``h^l``),
    averaged over the probe inputs.
    """
    z = _float(z)
    return jnp.mean(z * z)


def c_value(z):
    """Mean correlation of pre-activations over distinct pairs of probe inputs.

    ``c = (1 / (N (N-1))) sum_{a != b} cos(z_a, z_b)``, where
    ``cos(z_a, z_b) = z_a . z_b / (|z_a| |z_b|)`` is the correlation map
    ``c^l_{12} = q^l_{12} / sqrt(q^l_{11} q^l_{22})`` of Poole et al. 2016
    (Sec. 2, "the propagation of two points") and Schoenholz et al. 2017
    (Sec. 2), for the pair (a, b). A pair
    with a zero vector counts as cos = 0 (uncorrelated: there is no
    direction). Computed in O(N U) from unit vectors u_a:
    ``sum_{a != b} u_a . u_b = |sum_a u_a|^2 - sum_a |u_a|^2``.
    NaN if N < 2 (no pair).
    """
    z = _float(z)
    n = z.shape[0]
    if n < 2:
        return _nan(z.dtype)
    norm = jnp.sqrt(jnp.sum(z * z, axis=1, keepdims=True))
    u = jnp.where(norm > 0, z / jnp.where(norm > 0, norm, 1.0), 0.0)
    total = jnp.sum(u, axis=0)
    off_diag = jnp.sum(total * total) - jnp.sum(u * u)
    return off_diag / (n * (n - 1))


# ---------------------------------------------------------------------------
# Jacobian and rank
# ---------------------------------------------------------------------------

def singular_values(m):
    """Singular values of a matrix (a, b), descending, min(a, b) of them, with
    absolute error ~eps * sigma_max: :func:`deadjax.linalg.singular_values`
    (on CPU Householder QR and bidiagonalisation written in XLA operations,
    then bisection; elsewhere QR and the backend's symmetric eigensolver on
    the Jordan-Wielandt matrix ``[[0, R], [R^T, 0]]``). Neither forms the
    Gram matrix ``m^T m``, which squares the condition number.
    """
    return linalg.singular_values(m)


def jacobian_mean_singular_value(kernel, dphi):
    """Mean singular value of the layer Jacobian, averaged over inputs.

    For input x the Jacobian of h_l with respect to h_{l-1} is
    ``J(x) = diag(phi'(z_l(x))) W^T`` (U_out x U_in), with ``kernel = W`` in
    Flax layout (U_in, U_out); it has the singular values of
    ``W diag(phi'(z_l(x)))``. The result is
    ``(1/n) sum_x (1/r) sum_k sigma_k(J(x))`` with ``r = min(U_in, U_out)``
    (zero singular values included), over the n inputs in ``dphi`` (n, U_out)
    (``diagnostics.jacobian_probe_size``). Glorot & Bengio 2010, Sec. 4.2.2:
    about 0.5 with the standard initialisation and 0.8 with the normalised
    one in their 5-layer tanh networks; 1 everywhere means dynamical
    isometry in the mean. Singular values by :func:`singular_values`. For
    layers with normalisation or a residual connection the Jacobian has more
    terms; build it and take ``singular_values(J).mean()`` per input.
    """
    w = _float(kernel)
    dphi = _float(dphi)

    def one(d):
        return jnp.mean(singular_values(w * d[None, :]))

    return jnp.mean(jax.vmap(one)(dphi))


def representation_singular_values(h):
    """Singular values of an (N, U) representation matrix, descending.

    :func:`singular_values` (backward stable). The route through the Gram
    matrix ``h^T h`` and ``eigvalsh`` squares the condition number: in
    float32 its spurious singular values are ~3e-4 sigma_max, and a rank-5
    matrix of 1024 x 128 then has effective rank 5.11 instead of 5.
    """
    return singular_values(h)


def effective_rank(h):
    """Effective rank of a layer's (N, U) representation (Roy & Vetterli 2007).

    ``erank = exp(-sum_k p_k log p_k)`` with ``p_k = sigma_k / sum_j sigma_j``,
    sigma the singular values of the uncentred matrix h (rows = probe inputs)
    and ``0 log 0 = 0``. It lies in [1, min(N, U)], equals k for k equal
    non-zero singular values, and is base-free (exp of a natural-log
    entropy).

    Numerical zero: singular values ``<= sigma_max * max(N, U) * eps`` (the
    default tolerance of ``numpy.linalg.matrix_rank``) are set to 0, so
    round-off does not add spurious directions. All-zero matrix: returns 1
    (Roy & Vetterli define erank for non-zero matrices only; 1 is what
    loss-of-plasticity's ``compute_effective_rank``,
    shibhansh/loss-of-plasticity ``lop/utils/miscellaneous.py``, gives there:
    its p = sigma / sum|sigma| is 0/0, the entropy sums over p > 0 only and is
    0, exp(0) = 1), so the measure never leaves [1, min(N, U)] and seed means
    compare with Dohare et al. 2024's; a layer that carries no signal shows
    in ``dormant_ratio_0`` and ``dead_fraction``. NaN in h gives NaN.
    """
    h = _float(h)
    s = representation_singular_values(h)
    eps = jnp.finfo(s.dtype).eps
    smax = jnp.max(s)
    s = jnp.where(s > smax * max(h.shape) * eps, s, 0.0)
    total = jnp.sum(s)
    p = s / jnp.where(total > 0, total, 1.0)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    erank = jnp.exp(-jnp.sum(plogp))        # every p = 0 for the zero matrix: exp(0) = 1
    return jnp.where(jnp.all(jnp.isfinite(h)), erank, jnp.nan)


# ---------------------------------------------------------------------------
# Output and histograms
# ---------------------------------------------------------------------------

def output_constant(outputs, rtol=1e-6):
    """True iff the network's output does not depend on its input on the probe batch.

    ``max_{i,c} |out[i,c] - out[0,c]| <= rtol * max(1, max_{i,c} |out[i,c]|)``
    (Lu et al. 2019, "born dead": a ReLU network whose output is a constant
    function of the input, e.g. because a whole layer is dead). The tolerance
    is relative to the output scale with a floor of 1, so it absorbs float32
    round-off only. ``born_dead`` is this flag at step 0. Non-finite outputs
    give False.
    """
    out = _float(outputs)
    out = out.reshape(out.shape[0], -1)
    spread = jnp.max(jnp.abs(out - out[0:1]))
    scale = jnp.maximum(1.0, jnp.max(jnp.abs(out)))
    return spread <= jnp.asarray(rtol, out.dtype) * scale


def histogram(values, num_bins: int):
    """Fixed-size histogram of all finite entries of ``values``.

    Returns ``(lo, hi, counts)``: ``counts`` (num_bins,) int32 over the edges
    ``linspace(lo, hi, num_bins + 1)``; bins are ``[e_i, e_{i+1})`` except the
    last, ``[e_{n-1}, e_n]`` (``numpy.histogram`` semantics, and its method:
    the bin from ``(v - lo) / (hi - lo) * num_bins``, moved by one where
    round-off put the value on the wrong side of an edge). ``lo``/``hi`` are the min/max of the
    finite entries, except when they are equal: then, like ``numpy.histogram``,
    the range is ``(v - 0.5, v + 0.5)`` and every entry falls in the middle bin
    (index num_bins // 2). Non-finite entries are not counted (their number is
    ``values.size - counts.sum()``); if no entry is finite, lo = hi = NaN and
    all counts are 0. ``lo, hi, counts`` always reconstruct the histogram.
    """
    v = _float(values).reshape(-1)
    finite = jnp.isfinite(v)
    any_finite = jnp.any(finite)
    lo = jnp.min(jnp.where(finite, v, jnp.inf))
    hi = jnp.max(jnp.where(finite, v, -jnp.inf))
    same = lo == hi
    lo = jnp.where(same, lo - 0.5, lo)
    hi = jnp.where(same, hi + 0.5, hi)
    lo = jnp.where(any_finite, lo, jnp.nan)
    hi = jnp.where(any_finite, hi, jnp.nan)
    first = jnp.where(any_finite, lo, 0.0)
    last = jnp.where(any_finite, hi, 1.0)
    edges = jnp.linspace(first, last, num_bins + 1)
    # numpy.histogram's own method for equal bins: the bin from arithmetic,
    # then corrected by one where round-off put a value across an edge.
    safe = jnp.where(finite, v, first)
    idx = jnp.clip(((safe - first) / (last - first) * num_bins).astype(jnp.int32),
                   0, num_bins - 1)
    idx = idx - (safe < edges[idx]).astype(jnp.int32)
    idx = idx + ((safe >= edges[idx + 1]) & (idx != num_bins - 1)).astype(jnp.int32)
    counts = jnp.zeros((num_bins,), jnp.int32).at[idx].add(finite.astype(jnp.int32))
    return lo, hi, counts


# ---------------------------------------------------------------------------
# Curvature: the top eigenvalue of the loss Hessian (sharpness)
# ---------------------------------------------------------------------------

def hessian_vector_product(loss_fn, params):
    """``v -> H v`` for ``H = ∇²loss_fn(params)``, on flat float vectors.

    Forward-over-reverse (Pearlmutter 1994, "Fast exact multiplication by the
    Hessian"; the JAX autodiff cookbook's ``hvp``): the directional derivative
    of the gradient, ``H v = d/dε ∇L(θ + ε v)|_{ε=0}``, exact up to
    round-off. ``jax.linearize`` of ``jax.grad(loss_fn)`` runs the gradient's
    forward pass once and keeps its linearisation, so each product costs about
    one more forward-and-backward pass (the same as ``jax.jvp`` of
    ``jax.grad`` called per vector, without recomputing the primal).
    Returns ``(hvp, ravel)``: ``hvp`` maps a flat ``(n,)`` vector to the flat
    ``H v``; ``ravel`` flattens a pytree shaped like ``params``
    (``jax.flatten_util.ravel_pytree``'s order)."""
    _, unravel = ravel_pytree(params)
    _, linear = jax.linearize(jax.grad(loss_fn), params)

    def hvp(v):
        return ravel_pytree(linear(unravel(v)))[0]

    return hvp, lambda tree: ravel_pytree(tree)[0]


# Lanczos steps per cycle of :func:`hessian_top_eigenvalue` (the Krylov basis it
# keeps: this many vectors the size of the parameters, per member).
LANCZOS_STEPS = 20


def hessian_top_eigenvalue(loss_fn, params, v0, num_iters: int, tol: float,
                           krylov_dim: int = LANCZOS_STEPS):
    """The largest eigenvalue of the Hessian ``H = ∇²loss_fn(params)`` by the
    Lanczos method on Hessian-vector products: ``(eigenvalue, eigenvector,
    iterations_used)``.

    This is the *sharpness* of Cohen, Kaur, Li, Kolter & Talwalkar (ICLR
    2021, "Gradient descent on neural networks typically occurs at the edge of
    stability", Sec. 2: "the maximum eigenvalue of the training loss
    Hessian"; their code also uses Lanczos, through ARPACK). ``H v`` comes
    from :func:`hessian_vector_product`; ``H`` is never formed.

    Algorithm (Lanczos with full reorthogonalisation and explicit restarts;
    Golub & Van Loan, *Matrix Computations*, 4th ed., Sec. 10.1 and 10.3.1,
    Parlett, *The Symmetric Eigenvalue Problem*, Ch. 13). From ``q_1 = v0 /
    ‖v0‖``, step ``j`` computes ``w = H q_j``, ``α_j = q_jᵀw``, ``w ← w − α_j
    q_j − β_{j−1} q_{j−1}``, then subtracts from ``w`` its projection on every
    basis vector so far (twice: float32 loses orthogonality otherwise),
    ``β_j = ‖w‖``, ``q_{j+1} = w / β_j``. The tridiagonal ``T_j``
    (``α`` on the diagonal, ``β`` beside it) is the Rayleigh quotient of
    ``H`` on the Krylov space ``span{q_1, H q_1, ..., H^{j−1} q_1}``; its
    largest eigenvalue ``θ`` (:func:`deadjax.linalg.tridiagonal_top_eigenpair`) is the largest
    Ritz value, always ``≤ λ_max(H)`` (Cauchy interlacing), and its Ritz
    vector ``y = Q_j s`` has the residual ``‖H y − θ y‖ = β_j |s_j|``
    (``s_j`` the last entry of ``T_j``'s eigenvector). The method stops when
    ``β_j |s_j| ≤ tol · |θ|``: then an eigenvalue of ``H`` lies within
    ``tol · |θ|`` of ``θ`` (the residual bound for symmetric matrices,
    Parlett Ch. 4), usually much closer (``residual² / gap``). After
    ``krylov_dim`` steps without meeting the test the basis is dropped and
    Lanczos restarts from ``y`` (memory: ``krylov_dim + 1`` vectors the size
    of the parameters), up to ``num_iters`` products in all. Unlike power
    iteration it targets the largest *algebraic* eigenvalue, whatever the
    negative ones, and it converges much faster when the top eigenvalues are
    close (e.g. the ``C − 1`` outliers of a ``C``-class cross-entropy
    Hessian).

    Returned: ``θ``, its unit Ritz vector ``y`` (a pytree shaped like
    ``params``; pass it back as ``v0`` at the next call to warm-start) and
    the number of products used (int32). If the test was not met within
    ``num_iters`` products (``iterations_used == num_iters``), ``θ`` is
    still a Ritz value, hence a *lower bound* on ``λ_max``, but not certified.
    Caveats: Lanczos finds ``λ_max`` only when ``v0`` has a component along
    its eigenvector (almost surely for a random ``v0``; a warm start from an
    older top eigenvector can meet the test at another eigenvector if the
    order of the top eigenvalues changed between calls and the old vector is
    still an eigenvector within ``tol``). Float32 products carry ~1e-6
    relative errors, so a ``tol`` below ~1e-5 may never be met. A non-finite
    product (a diverged member) stops at once with NaN. The basis products
    are matmuls: call it under ``jax.default_matmul_precision("float32")`` on
    accelerators (the trainer does).

    Jit- and vmap-safe: ``lax.while_loop`` s of at most ``num_iters`` (static
    or traced) products, ``krylov_dim`` static; under ``vmap`` every member
    steps until the last one stops, each keeping its own result from the
    step where it stopped.
    """
    hvp, ravel = hessian_vector_product(loss_fn, params)
    _, unravel = ravel_pytree(params)
    start = ravel(v0)
    n = start.shape[0]
    k = max(1, min(int(krylov_dim), n))
    dtype = start.dtype
    tol = jnp.asarray(tol, dtype)
    idx = jnp.arange(k)

    def top_ritz(alpha, beta, j):
        """The largest eigenpair of ``T`` restricted to its leading ``j + 1``
        rows: the rows beyond are decoupled and their diagonal set below
        every Gershgorin disc of the leading block, so the top eigenpair
        (:func:`deadjax.linalg.tridiagonal_top_eigenpair`: no LAPACK call on
        CPU) is the leading block's."""
        active = idx <= j
        off = jnp.where(idx < j, beta, 0.0)[: k - 1]
        radius = jnp.abs(jnp.concatenate([off, jnp.zeros((1,), dtype)])) + jnp.abs(
            jnp.concatenate([jnp.zeros((1,), dtype), off]))
        lowest = jnp.min(jnp.where(active, alpha - radius, jnp.inf))
        diag = jnp.where(active, alpha, lowest - 1.0 - jnp.abs(lowest))
        value, vector = linalg.tridiagonal_top_eigenpair(diag, off)
        return value, jnp.where(active, vector, 0.0)

    def cycle(q, budget):
        """One Lanczos run of at most ``min(k, budget)`` steps from the unit
        ``q``: ``(θ, unit Ritz vector, steps, stopped)``."""
        basis = jnp.zeros((k + 1, n), dtype).at[0].set(q)

        def cond(c):
            j, _, _, _, _, _, stop = c
            return (j < jnp.minimum(k, budget)) & ~stop

        def body(c):
            j, basis, alpha, beta, _, _, _ = c
            v = basis[j]
            w = hvp(v)
            a = jnp.vdot(v, w)
            prev = jnp.where(j > 0, beta[jnp.maximum(j - 1, 0)], 0.0)
            w = w - a * v - prev * basis[jnp.maximum(j - 1, 0)]
            for _ in range(2):
                w = w - basis.T @ (basis @ w)
            b = jnp.linalg.norm(w)
            alpha = alpha.at[j].set(a)
            beta = beta.at[j].set(b)
            theta, s = top_ritz(alpha, beta, j)
            residual = b * jnp.abs(s[j])
            stop = (residual <= tol * jnp.abs(theta)) | ~jnp.isfinite(theta)
            basis = basis.at[j + 1].set(jnp.where(b > 0, w / jnp.where(b > 0, b, 1.0), 0.0))
            return j + 1, basis, alpha, beta, theta, s, stop

        zeros = jnp.zeros((k,), dtype)
        j, basis, _, _, theta, s, stop = jax.lax.while_loop(
            cond, body, (jnp.zeros((), jnp.int32), basis, zeros, zeros,
                         jnp.full((), jnp.nan, dtype), zeros, jnp.zeros((), bool)))
        y = basis[:k].T @ s
        norm = jnp.linalg.norm(y)
        y = jnp.where(norm > 0, y / jnp.where(norm > 0, norm, 1.0), q)
        return theta, y, j, stop

    def outer_cond(c):
        used, _, _, stop = c
        return (used < num_iters) & ~stop

    def outer_body(c):
        used, q, _, _ = c
        theta, y, steps, stop = cycle(q, num_iters - used)
        return used + steps, y, theta, stop

    used, vector, theta, _ = jax.lax.while_loop(
        outer_cond, outer_body, (jnp.zeros((), jnp.int32), start / jnp.linalg.norm(start),
                                 jnp.full((), jnp.nan, dtype), jnp.zeros((), bool)))
    return theta, unravel(vector), used
