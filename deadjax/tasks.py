"""Non-stationary tasks: permuted inputs, shuffled labels, slowly-changing regression.

Every task here is a pure function of a **task index** ``t`` and a **task key**
(see :func:`task_key`), with static shapes, so it runs inside ``jit``, ``scan``
and ``vmap`` with ``t`` traced. The task index is

    t = step // task_every            (:func:`task_index`)

and is the same for every member of a population, because all members share
the training step; the task key is derived from ``data.seed`` only, so all
members see the same sequence of tasks. Task 0 is always the plain task (the
identity permutation, the initial flipping bits), so a run with no task change
is the ordinary stationary run.

* **Permuted inputs** (:func:`input_permutation`) -- the "permuted MNIST"
  protocol (Goodfellow et al. 2013, "An empirical investigation of catastrophic
  forgetting in gradient-based neural networks"; used as "Online Permuted
  MNIST" by Dohare et al. 2024, Nature, "Loss of plasticity in deep continual
  learning"). Every task reorders the input features by a fixed random
  permutation.
* **Shuffled labels** (:func:`label_permutation`) -- every task permutes the
  class identities (the "label-permuted" tasks of Elsayed & Mahmood 2024).
* **Slowly-changing regression** (:func:`regression_teacher`,
  :func:`teacher_output`, :func:`flipping_bits`, :func:`regression_batch`) --
  Dohare, Sutton & Mahmood 2021 ("Continual backprop: stochastic gradient
  descent with persistent randomness", arXiv:2108.06325, where it is called the
  bit-flipping problem) and Dohare et al. 2024 (Nature, Methods and Extended
  Data Fig. 2). What was checked against the authors' code, and where deadjax
  differs from it, is in :func:`regression_teacher` and :func:`flipping_bits`.

Random streams: :func:`task_key` folds a constant per kind of task into
``PRNGKey(data.seed)`` (constants distinct from ``data``'s probe and shared-order
streams), and the regression functions fold in their own constants for the
teacher and the flipping bits, so one regression key may be given to all of
them. See docs/data.md, "Non-stationary tasks".
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "TASKS", "DATA_TASKS", "Tasks", "for_data", "DEFAULT_NUM_BITS", "DEFAULT_NUM_FLIPPING", "TEACHER_HIDDEN",
    "TEACHER_BETA", "DEFAULT_FLIP_AFTER",
    "task_key", "task_index",
    "input_permutation", "label_permutation",
    "regression_teacher", "teacher_output", "flipping_bits", "regression_batch",
]

TASKS = ("permuted_inputs", "shuffled_labels", "slowly_changing_regression")

# The values of ``data.task``: how a classification dataset changes over training.
DATA_TASKS = ("stationary", "permuted_inputs", "shuffled_labels")

# Slowly-changing regression, values of the authors' configuration
# shibhansh/loss-of-plasticity, lop/slowly_changing_regression/cfg/prob.json and
# cfg/flip_one_prob.json ("num_inputs": 20, "num_flipping_bits": 15,
# "num_target_features": 100, "beta": 0.7, "flip_after": 10000).
DEFAULT_NUM_BITS = 20        # m: input bits, the constant bias bit not counted
DEFAULT_NUM_FLIPPING = 15    # f: the first f bits are the slowly flipping bits
TEACHER_HIDDEN = 100         # LTUs in the teacher's one hidden layer
TEACHER_BETA = 0.7           # beta of the LTU thresholds
DEFAULT_FLIP_AFTER = 10_000  # T: examples per task (task_every at batch size 1)

# Constants folded into the keys ("inpt", "labl", "scrg", "tchr", "flip").
_TASK_STREAMS = {
    "permuted_inputs": 0x696E7074,
    "shuffled_labels": 0x6C61626C,
    "slowly_changing_regression": 0x73637267,
}
_TEACHER_STREAM = 0x74636872
_FLIP_STREAM = 0x666C6970

# flipping_bits draws the flip choices this many at a time (one vectorised
# draw per chunk, ceil(t / chunk) sequential chunks).
_FLIP_CHUNK = 1024


def task_key(seed: int, task: str) -> jax.Array:
    """The shared key of one kind of task: ``fold_in(PRNGKey(seed), stream)``.

    ``seed`` is ``data.seed`` (never a member's seed), so every member of a
    population gets the same tasks; ``task`` is one of :data:`TASKS`, each with
    its own constant ``stream``, so the kinds of task are independent.
    """
    if task not in _TASK_STREAMS:
        raise ValueError(f"task = {task!r} is not one of {', '.join(TASKS)}.")
    return jax.random.fold_in(jax.random.PRNGKey(int(seed)), _TASK_STREAMS[task])


def task_index(step, every: int):
    """int32 task index ``step // every`` (``step`` may be a traced integer).

    ``every`` is the static number of training steps per task (``>= 1``). At
    batch size 1 a task is ``every`` examples; at batch size ``B`` it is
    ``every * B`` examples.
    """
    if isinstance(every, int) and every < 1:
        raise ValueError(f"every = {every} must be >= 1.")
    return jnp.floor_divide(jnp.asarray(step).astype(jnp.int32), jnp.int32(every))


def _permutation(key, t, n: int):
    """int32 (n,): identity at ``t = 0``, ``permutation(fold_in(key, t), n)`` after."""
    t = jnp.asarray(t).astype(jnp.int32)
    perm = jax.random.permutation(jax.random.fold_in(key, t), n).astype(jnp.int32)
    return jnp.where(t == 0, jnp.arange(n, dtype=jnp.int32), perm)


def input_permutation(key, t, num_features: int):
    """int32 ``(num_features,)`` permutation of the input features at task ``t``.

    Task 0 is the identity (the plain dataset); task ``t > 0`` is
    ``jax.random.permutation(jax.random.fold_in(key, t), num_features)``, a
    uniformly random permutation drawn independently for every task. It is
    applied as ``x[..., perm]``: feature ``j`` of the permuted input is feature
    ``perm[j]`` of the original one. Labels are unchanged.

    Protocol: permuted MNIST (Goodfellow et al. 2013); Dohare et al. 2024 use
    it online, with batch size 1 and 60,000 examples per task
    (shibhansh/loss-of-plasticity, lop/permuted_mnist/online_expr.py). There
    the first task is already permuted and each task's permutation is applied
    on top of the previous one (``x = x[:, perm]``); a composition of
    independent uniform permutations is again uniform, so deadjax's tasks
    ``t > 0`` have the same distribution, but deadjax's task 0 is unpermuted.
    """
    return _permutation(key, t, int(num_features))


def label_permutation(key, t, num_classes: int):
    """int32 ``(num_classes,)`` permutation of the class identities at task ``t``.

    Task 0 is the identity; task ``t > 0`` is
    ``jax.random.permutation(jax.random.fold_in(key, t), num_classes)``. It is
    applied as ``perm[y]``: every example of class ``c`` gets the label
    ``perm[c]``. So this renames the classes and nothing else: the inputs, the
    partition of the inputs into classes and the class frequencies stay the
    same, the mapping from inputs to labels stays learnable, and every task is
    exactly as hard as the first (as a fresh network would see it). It is not
    label noise and not random labels per example. With few classes two tasks
    can coincide (each ``t > 0`` is the identity with probability
    ``1 / num_classes!``).

    Protocol: the "label-permuted" EMNIST / CIFAR-10 / mini-ImageNet tasks of
    Elsayed & Mahmood 2024 (ICLR, "Addressing loss of plasticity and
    catastrophic forgetting in continual learning"), checked in their code
    (mohmdelsayed/upgd, core/task/label_permuted_emnist.py: every
    ``change_freq`` steps ``targets = randperm(n_outputs)[targets]``). There
    the first task is already permuted and the permutations compose, which,
    as for :func:`input_permutation`, gives the same distribution for
    ``t > 0``; deadjax's task 0 is unpermuted.
    """
    return _permutation(key, t, int(num_classes))


# ---------------------------------------------------------------------------
# Slowly-changing regression
# ---------------------------------------------------------------------------

def _check_bits(num_bits: int, num_flipping: int) -> tuple[int, int]:
    m, f = int(num_bits), int(num_flipping)
    if m < 1 or not 0 <= f <= m:
        raise ValueError(f"need num_bits >= 1 and 0 <= num_flipping <= num_bits; "
                         f"got num_bits = {m}, num_flipping = {f}.")
    return m, f


def regression_teacher(key, num_bits: int = DEFAULT_NUM_BITS,
                       hidden: int = TEACHER_HIDDEN, beta: float = TEACHER_BETA,
                       *, reference_thresholds: bool = False) -> dict:
    """The fixed random target network of the slowly-changing regression.

    Returns float32 arrays ``{"w1": (hidden, m + 1), "theta": (hidden,),
    "w2": (hidden,), "b2": ()}`` with ``m = num_bits``. The input has ``m + 1``
    bits, the last one always 1 (the bias); ``w1[:, m]`` is the bias weight.
    Every weight (``w1``, ``w2`` and the output bias ``b2``) is drawn
    independently and uniformly from {-1, +1} (``jax.random.rademacher`` with
    ``fold_in(key, "tchr")`` split three ways). LTU ``i`` outputs 1 if
    ``w1[i] . x > theta[i]`` and 0 otherwise; the output is
    ``w2 . ltu(x) + b2`` (:func:`teacher_output`). The teacher never changes:
    only the input distribution does. ``num_bits``, ``hidden`` and ``beta``
    are static (Python numbers).

    Thresholds (default): ``theta_i = (m + 1) * beta - S_i`` with ``S_i`` the
    number of -1 weights among LTU ``i``'s ``m + 1`` input weights, bias weight
    included. For inputs in {0, 1}, ``w1[i] . x = (number of the m + 1 bits
    that match the sign pattern of w1[i]) - S_i`` (a bit matches if it is 1
    where the weight is +1 and 0 where it is -1), so LTU ``i`` fires exactly
    when more than ``beta * (m + 1)`` of the ``m + 1`` input bits match its
    weights.

    ``reference_thresholds=True`` reproduces the authors' code instead
    (shibhansh/loss-of-plasticity, lop/nets/fix_ltu_net.py, ``FixLTUNet``):
    ``S_i = (m - sum_{j<m} w1[i, j] + w1[i, m]) / 2``, i.e. the number of -1
    weights among the ``m`` non-bias weights plus half the bias weight. With
    the defaults (m = 20, beta = 0.7: ``beta (m + 1) = 14.7``) and integer
    ``w1 . x``, the two rules fire on the same inputs for LTUs whose bias
    weight is +1 (need at least 15 of 21 matching bits); for bias weight -1 the
    reference rule needs at least 17.

    Checked in the authors' code: weights and biases of both layers uniform on
    {-1, +1} (``torch.randint(0, 2, ...) * 2 - 1``) in ``fix_ltu_net.py``; the
    LTU fires on ``input > tau`` (strict) in lop/utils/ltu.py; the bias enters
    as ``nn.Linear``'s bias rather than a constant input column (the same
    function as deadjax's last input bit with weight ``w1[:, m]``); 100 LTUs,
    beta 0.7, m = 20 in cfg/prob.json (``FixLTUNet``'s own defaults, 80 and
    0.75, are not used). Dohare et al. 2024 (Extended Data Fig. 2 caption):
    the input has ``m + 1`` bits, the last always 1; every weight of the target
    network is -1 or 1. The threshold formula in the papers' text was not
    checked here.
    """
    m, _ = _check_bits(num_bits, 0)
    h = int(hidden)
    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, _TEACHER_STREAM), 3)
    w1 = jax.random.rademacher(k1, (h, m + 1), dtype=jnp.float32)
    w2 = jax.random.rademacher(k2, (h,), dtype=jnp.float32)
    b2 = jax.random.rademacher(k3, (), dtype=jnp.float32)
    if reference_thresholds:
        s = (m - jnp.sum(w1[:, :m], axis=1) + w1[:, m]) / 2.0
    else:
        s = jnp.sum(w1 < 0, axis=1).astype(jnp.float32)
    theta = jnp.float32(float(beta) * (m + 1)) - s
    return {"w1": w1, "theta": theta, "w2": w2, "b2": b2}


def teacher_output(teacher: dict, x):
    """float32 teacher output ``(...,)`` for inputs ``x`` of shape ``(..., m + 1)``.

    ``y = sum_i w2_i [w1_i . x > theta_i] + b2`` (bias bit last in ``x``).
    The sums are taken at full precision, so for 0/1 inputs they are exact
    integers on any backend.
    """
    x = jnp.asarray(x, jnp.float32)
    hp = jax.lax.Precision.HIGHEST
    pre = jnp.einsum("...j,ij->...i", x, teacher["w1"], precision=hp)
    ltu = (pre > teacher["theta"]).astype(jnp.float32)
    return jnp.einsum("...i,i->...", ltu, teacher["w2"], precision=hp) + teacher["b2"]


def flipping_bits(key, t, num_bits: int = DEFAULT_NUM_BITS,
                  num_flipping: int = DEFAULT_NUM_FLIPPING):
    """float32 ``(num_flipping,)`` 0/1 values of the flipping bits at task ``t``.

    With ``k = fold_in(key, "flip")``: the bits of task 0 are i.i.d. uniform
    (``bernoulli(fold_in(k, 0), 0.5)``); task ``s >= 1`` starts by flipping
    the one bit ``c_s = randint(fold_in(k, s), 0, num_flipping)``, chosen
    uniformly and independently of the others (it may be a bit flipped
    before). So at task ``t`` bit ``j`` is its task-0 value XOR the parity of
    ``#{1 <= s <= t : c_s = j}``, and consecutive tasks differ in exactly one
    bit. ``num_bits`` only checks ``num_flipping <= num_bits``.

    Exact and pure in ``t`` (a Python int or a traced int32, ``t < 2**31 -
    1024``): the choices ``c_1..c_t`` are redrawn from their keys at every call,
    1024 at a time in one vectorised draw, inside a ``lax.fori_loop`` over
    ``ceil(t / 1024)`` chunks -- so O(t) work but a single chunk for the first
    1024 tasks, no bound to fix in advance and no state to carry.

    Checked in the authors' code (shibhansh/loss-of-plasticity,
    lop/slowly_changing_regression/slowly_changing_regression.py,
    ``generate_problem_data``): ``X = cat(flipping_bits, random_bits)``, the
    first ``num_flipping`` columns flip and the other ``num_inputs -
    num_flipping`` are fresh ``randint(2)`` bits for every example; the flipping
    bits change every ``flip_after`` examples (10,000 in cfg/prob.json), one
    example per learning step (lop/slowly_changing_regression/expr.py). With
    ``flip_one`` true (cfg/flip_one_prob.json, cfg/flip_one/*.json) the initial
    bits are random and each change flips one uniformly chosen bit, as here and
    as the Nature paper describes (Extended Data Fig. 2: "One of the flipping
    bits is chosen after every T time steps and its value is flipped"). Note
    that ``flip_one`` defaults to false, and cfg/prob.json (the data of the
    cfg/sgd and cfg/adam runs and of the README's recipe) does not set it: that
    data redraws all ``num_flipping`` bits at random at every change. deadjax
    implements only the one-bit flip.
    """
    _, f = _check_bits(num_bits, num_flipping)
    if f == 0:
        return jnp.zeros((0,), jnp.float32)
    return _flipping_bits(key, jnp.asarray(t).astype(jnp.int32), f)


@functools.partial(jax.jit, static_argnums=2)
def _flipping_bits(key, t, f: int):
    # Compiled once per (f, key type), so eager calls with a new t are cheap too.
    k = jax.random.fold_in(key, _FLIP_STREAM)
    bits0 = jax.random.bernoulli(jax.random.fold_in(k, 0), 0.5, (f,))
    offsets = jnp.arange(1, _FLIP_CHUNK + 1, dtype=jnp.int32)

    def chunk(i, counts):
        s = i * _FLIP_CHUNK + offsets                      # boundaries s of this chunk
        c = jax.vmap(lambda si: jax.random.randint(jax.random.fold_in(k, si),
                                                   (), 0, f))(s)
        hit = (c[:, None] == jnp.arange(f)) & (s <= t)[:, None]
        return counts + jnp.sum(hit, axis=0, dtype=jnp.int32)

    n_chunks = (jnp.maximum(t, 0) + _FLIP_CHUNK - 1) // _FLIP_CHUNK
    counts = jax.lax.fori_loop(0, n_chunks, chunk, jnp.zeros((f,), jnp.int32))
    return jnp.logical_xor(bits0, counts % 2 == 1).astype(jnp.float32)


def regression_batch(key, teacher: dict, sample_key, t, batch_size: int,
                     num_flipping: int = DEFAULT_NUM_FLIPPING):
    """One batch ``(x, y)`` of the slowly-changing regression at task ``t``.

    ``key`` is the task's key (the one of :func:`flipping_bits`, typically
    ``task_key(data.seed, "slowly_changing_regression")``, from which
    ``teacher = regression_teacher(key, m)`` is also built); ``sample_key``
    draws the random bits of this batch (e.g. ``fold_in(member_or_shared_key,
    step)``). ``m`` is read from the teacher's shape; ``batch_size`` and
    ``num_flipping`` are static.

    Returns ``x`` float32 ``(B, m + 1)``: columns ``0..f-1`` the flipping bits
    of task ``t`` (the same in every row), columns ``f..m-1`` i.i.d. uniform
    0/1 bits (``bernoulli(sample_key, 0.5)``), column ``m`` the constant bias
    bit 1 (last, as in Dohare et al. 2024, Extended Data Fig. 2); and ``y``
    float32 ``(B,)`` = ``teacher_output(teacher, x)``, without noise (the
    authors' data have none either).

    In deadjax a task lasts ``task_every`` training steps; at batch size 1
    (Dohare's online setting: one example per step) that is ``task_every``
    examples, so ``task_every = 10_000`` (:data:`DEFAULT_FLIP_AFTER`) is the
    authors' T (``flip_after`` in cfg/prob.json). At batch size ``B`` a task is ``task_every * B`` examples. The
    authors' learner sees only the ``m`` bits and has its own bias
    (lop/nets/ffnn.py); use ``x[:, :-1]`` to give a network exactly that input.
    """
    m = teacher["w1"].shape[-1] - 1
    _, f = _check_bits(m, num_flipping)
    b = int(batch_size)
    bits = jnp.broadcast_to(flipping_bits(key, t, m, f), (b, f))
    fresh = jax.random.bernoulli(sample_key, 0.5, (b, m - f)).astype(jnp.float32)
    x = jnp.concatenate([bits, fresh, jnp.ones((b, 1), jnp.float32)], axis=1)
    return x, teacher_output(teacher, x)


# ---------------------------------------------------------------------------
# A group's tasks inside the trainer
# ---------------------------------------------------------------------------

class Tasks(NamedTuple):
    """How a group's data change with the training step, built once per
    compiled program by :func:`for_data` (its arrays are constants of the
    program). ``kind`` is ``"stationary"``, ``"permuted_inputs"``,
    ``"shuffled_labels"`` or ``"slowly_changing_regression"``."""

    kind: str
    every: int                 # training steps per task
    key: jax.Array | None      # task_key(data.seed, kind); None when stationary
    teacher: dict | None       # the regression's target network
    num_features: int
    num_classes: int
    flipping_bits: int

    @property
    def is_stream(self) -> bool:
        """Whether training batches are fresh draws (the regression stream)."""
        return self.kind == "slowly_changing_regression"

    def at(self, step):
        """The task the training step ``step`` (0-based) learns: ``step //
        every`` (0 for stationary data)."""
        if self.kind == "stationary":
            return jnp.zeros((), jnp.int32)
        return task_index(step, self.every)

    def evaluated(self, step):
        """The task an evaluation after ``step`` steps measures: the task of
        the last step taken (task 0 at step 0)."""
        return self.at(jnp.maximum(step - 1, 0))

    def present(self, x, y, t):
        """Stored inputs ``x`` and targets ``y`` as task ``t`` presents them:
        permuted input features, permuted class labels, or (the regression)
        task ``t``'s flipping bits in the first columns and the teacher's
        targets."""
        if self.kind == "permuted_inputs":
            return x[:, input_permutation(self.key, t, self.num_features)], y
        if self.kind == "shuffled_labels":
            return x, label_permutation(self.key, t, self.num_classes)[y]
        if self.is_stream:
            f = self.flipping_bits
            bits = flipping_bits(self.key, t, self.num_features, f).astype(x.dtype)
            x = x.at[:, :f].set(jnp.broadcast_to(bits, (x.shape[0], f)))
            full = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
            return x, teacher_output(self.teacher, full).astype(x.dtype)
        return x, y

    def stream_batch(self, sample_key, t, batch_size: int, dtype):
        """``batch_size`` fresh examples of task ``t`` of the regression
        stream (:func:`regression_batch`); the network sees the ``m`` bits,
        not the constant bias bit."""
        x, y = regression_batch(self.key, self.teacher, sample_key, t, batch_size,
                                self.flipping_bits)
        return x[:, :-1].astype(dtype), y.astype(dtype)


def for_data(config, num_features: int, num_classes: int) -> Tasks:
    """The :class:`Tasks` of a config's ``data`` fields (``data.name`` for the
    regression stream, else ``data.task``), with its key and teacher computed
    here, on the host."""
    d = config.data
    kind = d.name if d.name == "slowly_changing_regression" else d.task
    key = task_key(int(d.seed), kind) if kind != "stationary" else None
    teacher = regression_teacher(key, int(d.num_features)) if kind == TASKS[2] else None
    return Tasks(kind, int(d.task_every), key, teacher, int(num_features), int(num_classes),
                 int(d.flipping_bits))
