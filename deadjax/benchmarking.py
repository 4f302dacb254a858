"""Helpers of ``scripts/benchmark.py``: the seed MLP, its FLOP count, a
hand-written baseline and the timing rules. Nothing here writes to disk.

The benchmark compares three ways of training ``P`` members of the seed MLP
(784-128-128-10 ReLU, He-normal, batch 128, Adam 1e-3, ``random`` data,
``shuffle`` order) for the same number of steps from the same initial state:

- **deadjax**: :meth:`deadjax.population.Compiled.train_chunk`, the program
  sweeps run (a ``fori_loop`` of the vmapped step, then the evaluation);
- **hand-written**: ``jax.jit(lax.scan(jax.vmap(step)))`` of a pure ``jnp``
  MLP with ``optax.adam`` and the same batch rule (:class:`Handwritten`);
- **loop**: the members one after another, each with the hand-written step
  under ``jax.jit(lax.scan(step))``.

Throughput is counted in *member-steps per second* (one optimiser step of one
member), and its share of the machine's float32 matmul peak counts
``6 · parameters · batch`` FLOPs per member-step (forward 2, backward 4 FLOPs
per weight and example; biases, activations, the loss and Adam are left out,
which is the usual convention of Kaplan et al., 2020, Sec. 2.1).
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from deadjax import data as data_lib, metrics, optim, population as pop_lib
from deadjax.config import default_config
from deadjax.sweep import product

SEED_WIDTHS = (128, 128)
SEED_FEATURES = 784
SEED_CLASSES = 10
SEED_BATCH = 128
SEED_NUM_TRAIN = 1024
SEED_LEARNING_RATE = 1e-3


# --------------------------------------------------------------------------
# The seed MLP and its cost
# --------------------------------------------------------------------------

def seed_config(*, eval_every: int = 100, steps: int = 1000, diagnostics: bool = False,
                precision: str = "highest", max_population: int = 256,
                num_test: int = 1000) -> ml_collections.ConfigDict:
    """The seed MLP's config on ``random`` data (784 features, 10 classes)."""
    c = default_config()
    c.data.name = "random"
    c.data.num_train = SEED_NUM_TRAIN
    c.data.num_test = num_test
    c.data.num_features = SEED_FEATURES
    c.data.num_classes = SEED_CLASSES
    c.data.batch_size = SEED_BATCH
    c.data.order = "shuffle"
    c.model.widths = SEED_WIDTHS
    c.model.activation = "relu"
    c.model.kernel_init = "he_normal"
    c.optim.name = "adam"
    c.optim.learning_rate = SEED_LEARNING_RATE
    c.train.eval_every = eval_every
    c.train.steps = steps
    c.train.checkpoint_every = max(c.train.checkpoint_every // eval_every, 1) * eval_every
    c.train.max_population = max_population
    c.train.precision = precision
    c.diagnostics.enabled = diagnostics
    return c


def member_configs(config, population: int) -> list:
    """``population`` copies of ``config`` with seeds ``0 .. population - 1``."""
    out = []
    for seed in range(population):
        c = ml_collections.ConfigDict(config.to_dict())
        c.seed = seed
        out.append(c)
    return out


def num_params(features: int, widths: Sequence[int], classes: int) -> int:
    """Weights and biases of a dense MLP ``features -> widths -> classes``."""
    sizes = [features, *widths, classes]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def flops_per_member_step(features: int, widths: Sequence[int], classes: int,
                          batch: int) -> int:
    """``6 · parameters · batch``: the matmul FLOPs of one training step."""
    return 6 * num_params(features, widths, classes) * batch


# --------------------------------------------------------------------------
# deadjax's side
# --------------------------------------------------------------------------

def deadjax_population(config, population: int):
    """``(compiled, state, data)``: the group's compiled programs
    (:func:`deadjax.population.compiled`), its initial state and device data."""
    dataset = data_lib.load(config)
    configs = member_configs(config, population)
    compiled = pop_lib.compiled(pop_lib.spec_for(configs, dataset))
    state = compiled.init(np.arange(population, dtype=np.int32),
                          compiled.program.hparams_of(configs))
    data = data_lib.device_data(dataset, data_lib.probe_indices(config))
    return compiled, state, data


# --------------------------------------------------------------------------
# The hand-written baseline
# --------------------------------------------------------------------------

class Handwritten:
    """The seed MLP trained by a plain ``jit(scan(vmap(step)))``.

    A member is ``(params, opt_state, data_key, step)`` with ``params`` a list
    of ``(W, b)``. The batch rule is deadjax's ``shuffle`` order, the same
    work: :func:`deadjax.data.shuffled_indices` of epoch ``step // nb`` at the
    batch's positions, ``nb = N // B``.
    """

    def __init__(self, config, dataset: data_lib.Dataset):
        self.x = jnp.asarray(dataset.x_train)
        self.y = jnp.asarray(dataset.y_train)
        self.n = int(dataset.x_train.shape[0])
        self.b = int(config.data.batch_size)
        self.nb = self.n // self.b
        self.tx = optax.adam(float(config.optim.learning_rate), b1=optim.ADAM_B1,
                             b2=optim.ADAM_B2, eps=optim.ADAM_EPS)
        self.precision = pop_lib.MATMUL_PRECISION[config.train.precision]

    # ---- one member
    @staticmethod
    def forward(params, x):
        h = x
        for w, b in params[:-1]:
            h = jax.nn.relu(h @ w + b)
        w, b = params[-1]
        return h @ w + b

    def loss(self, params, x, y):
        logits = self.forward(params, x)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def batch(self, data_key, step):
        positions = (step % self.nb) * self.b + jnp.arange(self.b)
        idx = data_lib.shuffled_indices(jax.random.fold_in(data_key, step // self.nb),
                                        positions, self.n)
        return self.x[idx], self.y[idx]

    def step(self, member):
        params, opt_state, data_key, step = member
        x, y = self.batch(data_key, step)
        loss, grads = jax.value_and_grad(self.loss)(params, x, y)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, data_key, step + 1), loss

    # ---- compiled programs
    def population_program(self, steps: int) -> Callable:
        """``jit(scan(vmap(step)))`` over ``steps`` steps; the state is donated."""
        def run(members):
            with jax.default_matmul_precision(self.precision):
                body = lambda m, _: jax.vmap(self.step)(m)
                return jax.lax.scan(body, members, None, length=steps)
        return jax.jit(run, donate_argnums=0)

    def member_program(self, steps: int) -> Callable:
        """``jit(scan(step))`` of one member (the loop baseline)."""
        def run(member):
            with jax.default_matmul_precision(self.precision):
                return jax.lax.scan(lambda m, _: self.step(m), member, None, length=steps)
        return jax.jit(run, donate_argnums=0)

    # ---- state
    def from_deadjax(self, state: pop_lib.MemberState):
        """The hand-written population state that starts where deadjax's does
        (same parameters, same data keys, same step), Adam moments at zero."""
        names = sorted(state.params, key=lambda n: int(n.split("_")[1]))
        params = [(jnp.array(state.params[n]["kernel"]), jnp.array(state.params[n]["bias"]))
                  for n in names]
        opt_state = jax.vmap(self.tx.init)(params)
        return params, opt_state, jnp.array(state.data_key), jnp.array(state.step)


def member(members, i: int):
    """Member ``i`` of a stacked (population) state."""
    return jax.tree.map(lambda a: a[i], members)


# --------------------------------------------------------------------------
# Whole sweeps
# --------------------------------------------------------------------------

@dataclasses.dataclass
class SweepCase:
    """A sweep of one group as a user runs it: its config and points."""
    name: str
    description: str
    config: ml_collections.ConfigDict
    points: list


def sweep_cases(scale: int = 1) -> list[SweepCase]:
    """The three sweeps of the speed issue (``scale > 1`` divides members,
    examples and steps, for tests). Diagnostics off; TensorBoard, results and
    checkpoints as a sweep writes them."""
    def cfg(**fields):
        c = default_config()
        c.data.order = "shuffle"
        c.data.batch_size = 128 // scale
        c.diagnostics.enabled = False
        c.model.activation = "relu"
        c.model.kernel_init = "he_normal"
        for dotted, value in fields.items():
            section, leaf = dotted.split("__")
            c[section][leaf] = value
        every = c.train.eval_every
        c.train.steps = max(c.train.steps // every, 1) * every
        c.train.checkpoint_every = c.train.steps
        return c

    seeds = lambda n: {"seed": list(range(max(n // scale, 1)))}
    s1 = cfg(data__name="random", data__num_train=8192 // scale, data__num_features=784,
             data__num_classes=10, data__val_fraction=0.0, model__widths=(128, 128),
             train__steps=400 // scale, train__eval_every=400 // scale,
             train__max_population=64)
    s2 = cfg(data__name="mnist1d", model__widths=(64, 64), train__steps=500 // scale,
             train__eval_every=100 // scale, train__max_population=1024)
    s3 = cfg(data__name="random", data__num_train=60_000 // scale, data__num_test=10_000 // scale,
             data__num_features=784, data__num_classes=10, model__widths=(128, 128),
             train__steps=1000 // scale, train__eval_every=250 // scale,
             train__max_population=16)
    lrs = {"optim.learning_rate": [float(x) for x in np.geomspace(1e-4, 1e-1, 8)]}
    return [
        SweepCase("seed64", "64 seed MLPs 784-128-128-10, random data, 8,192 examples, "
                  "batch 128, shuffle, 400 steps, evaluations at 0 and 400", s1, product(seeds(64))),
        SweepCase("mnist1d1024", "1,024 MNIST-1D MLPs 40-64-64-10 (8 learning rates x 128 "
                  "seeds, one group), batch 128, shuffle, 500 steps, evaluations every 100",
                  s2, product(lrs, seeds(128))),
        SweepCase("mnist60k", "16 seed MLPs 784-128-128-10 on 60,000 random examples "
                  "(MNIST's shapes: 54,000 train, 6,000 val, 10,000 test), batch 128, "
                  "shuffle, 1,000 steps, evaluations every 250", s3, product(seeds(16))),
    ]


class HandwrittenSweep:
    """A sweep of one group written as plain JAX, doing deadjax's training and
    evaluations and nothing else: He-normal MLPs, Adam with each member's
    learning rate (``optax.inject_hyperparams``), deadjax's ``shuffle`` batch
    rule, ``jit(scan(vmap(step)))`` per evaluation interval (with each batch's
    loss and accuracy summed, deadjax's online metrics), then ``jit(vmap(
    evaluate))``: loss and accuracy on every split, macro F1 and one-vs-rest
    AUC on val and test (:mod:`deadjax.metrics`), brought to the host. No
    divergence checks, no files."""

    def __init__(self, config, learning_rates: Sequence[float], seeds: Sequence[int]):
        dataset = data_lib.load(config)
        self.splits = {k: (jnp.asarray(getattr(dataset, f"x_{k}")),
                           jnp.asarray(getattr(dataset, f"y_{k}")))
                       for k in ("train", "val", "test") if getattr(dataset, f"x_{k}").size}
        self.n = int(dataset.x_train.shape[0])
        self.b = int(config.data.batch_size)
        self.nb = self.n // self.b
        self.classes = int(dataset.num_classes)
        self.sizes = [dataset.num_features, *config.model.widths, self.classes]
        self.lrs = jnp.asarray(learning_rates, jnp.float32)
        self.seeds = jnp.asarray(seeds, jnp.int32)
        self.steps, self.every = int(config.train.steps), int(config.train.eval_every)
        self.tx = optax.inject_hyperparams(optax.adam)(learning_rate=0.0, b1=optim.ADAM_B1,
                                                       b2=optim.ADAM_B2, eps=optim.ADAM_EPS)

    def init(self, seed, lr):
        keys = jax.random.split(jax.random.PRNGKey(seed), len(self.sizes))
        params = [(jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), jnp.zeros(b))
                  for k, a, b in zip(keys[1:], self.sizes[:-1], self.sizes[1:])]
        opt = self.tx.init(params)
        opt.hyperparams["learning_rate"] = lr
        return params, opt, keys[0], jnp.zeros((), jnp.int32)

    @staticmethod
    def forward(params, x):
        for w, b in params[:-1]:
            x = jax.nn.relu(x @ w + b)
        w, b = params[-1]
        return x @ w + b

    def step(self, member):
        params, opt, key, step = member
        positions = (step % self.nb) * self.b + jnp.arange(self.b)
        idx = data_lib.shuffled_indices(jax.random.fold_in(key, step // self.nb), positions,
                                        self.n)
        x, y = self.splits["train"][0][idx], self.splits["train"][1][idx]

        def loss_fn(p):
            logits = self.forward(p, x)
            return metrics.cross_entropy(logits, y), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = self.tx.update(grads, opt, params)
        return ((optax.apply_updates(params, updates), opt, key, step + 1),
                (loss, metrics.accuracy(logits, y)))

    def evaluate(self, params):
        out = {}
        for split, (x, y) in self.splits.items():
            logits = self.forward(params, x)
            out[f"{split}/loss"] = metrics.cross_entropy(logits, y)
            out[f"{split}/accuracy"] = metrics.accuracy(logits, y)
            if split != "train":
                out[f"{split}/f1_macro"] = metrics.f1_macro(logits, y, self.classes)
                out[f"{split}/auc_roc"] = metrics.auc_roc_ovr(logits, y, self.classes)
        return out

    def run(self) -> dict[int, dict]:
        """Trains and evaluates every member; ``{step: host metrics}``."""
        with jax.default_matmul_precision("float32"):
            members = jax.jit(jax.vmap(self.init))(self.seeds, self.lrs)

            @functools.partial(jax.jit, donate_argnums=0)
            def interval(members):
                def body(m, _):
                    m, (loss, acc) = jax.vmap(self.step)(m)
                    return m, (loss, acc)
                members, (loss, acc) = jax.lax.scan(body, members, None, length=self.every)
                return members, loss.mean(0), acc.mean(0)

            evaluate = jax.jit(jax.vmap(self.evaluate))
            out = {0: jax.device_get(evaluate(members[0]))}
            for step in range(self.every, self.steps + 1, self.every):
                members, loss, acc = interval(members)
                host = jax.device_get({**evaluate(members[0]), "train/online_loss": loss,
                                       "train/online_accuracy": acc})
                out[step] = host
        return out


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------

def timed(fn: Callable[[], object]) -> float:
    """Seconds of ``fn()`` until its results are ready on the device."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def matmul_flops_per_second(device, *, size: int = 4096, repeats: int = 5,
                            precision: str = "highest") -> float:
    """Median FLOP/s of a jitted ``size x size`` float32 matmul on ``device``
    (``2 · size³`` FLOPs per product), compile excluded."""
    prec = pop_lib.MATMUL_PRECISION[precision]
    key = jax.random.PRNGKey(0)
    a = jax.device_put(jax.random.normal(key, (size, size), jnp.float32), device)
    b = jax.device_put(jax.random.normal(jax.random.fold_in(key, 1), (size, size),
                                         jnp.float32), device)

    @jax.jit
    def matmul(a, b):
        with jax.default_matmul_precision(prec):
            return a @ b

    jax.block_until_ready(matmul(a, b))
    seconds = median([timed(lambda: matmul(a, b)) for _ in range(repeats)])
    return 2.0 * size ** 3 / seconds


class Budget:
    """Seconds a section may spend (``seconds <= 0``: no limit). ``share(k)``
    is what is left divided among ``k`` remaining parts; ``allows(estimate)``
    whether another part that takes about ``estimate`` seconds still fits."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds or 0)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return float("inf") if self.seconds <= 0 else self.seconds - self.elapsed()

    def share(self, parts: int) -> float:
        return self.left() / max(parts, 1)

    def allows(self, estimate: float = 0.0) -> bool:
        return self.left() > estimate


# --------------------------------------------------------------------------
# Profiles: what a compiled program launches, and where a traced call spends
# its device time
# --------------------------------------------------------------------------

def hlo_op_counts(compiled) -> dict[str, int]:
    """Counts of the instructions of a compiled program's optimised HLO outside
    fused computations, by kind: ``fusion``, ``custom-call`` (cuBLAS/cuDNN
    calls on a GPU), ``while`` and ``other`` (parameters, constants, tuples and
    bitcasts left out). A static profile: each counted instruction is about
    one launch per execution of its computation; a loop body's instructions
    count once however many steps the loop runs."""
    import re
    text = compiled.as_text()
    fused = set(re.findall(r"\bfusion\(.*?calls=%?([\w.\-]+)", text))
    counts = {"fusion": 0, "custom-call": 0, "while": 0, "other": 0}
    free = ("parameter", "constant", "get-tuple-element", "tuple", "bitcast")
    current = None
    for line in text.splitlines():
        s = line.strip()
        if s.endswith("{") and " = " not in s:
            words = s.split()
            name = words[1] if words[0] == "ENTRY" and len(words) > 1 else words[0]
            current = name.lstrip("%")
            continue
        if current is None or current in fused or " = " not in s:
            continue
        m = re.search(r"=\s.*?\s([a-z][a-z0-9\-]*)\(", s)
        if not m or m.group(1) in free:
            continue
        op = m.group(1)
        counts[op if op in counts else "other"] += 1
    return counts


def trace_summary(trace_dir, top: int = 8) -> dict:
    """Device time of a ``jax.profiler.trace(..., create_perfetto_trace=True)``
    folder: ``{"events", "busy_us", "top": [(name, us, count)]}`` over the
    trace's device streams (process names holding "GPU" or "TPU"; the host's
    when there are none, as on a CPU)."""
    import collections
    import glob
    import gzip
    import json
    import os
    files = sorted(glob.glob(os.path.join(str(trace_dir), "**", "perfetto_trace.json.gz"),
                             recursive=True))
    if not files:
        return {"events": 0, "busy_us": 0.0, "top": [], "where": "no trace"}
    with gzip.open(files[-1], "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    procs = {e.get("pid"): e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = {p for p, n in procs.items() if "GPU" in n or "TPU" in n}
    keep = device or set(procs)
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        # On a host-only trace, Python's own frames ("$file:line name") nest
        # around the runtime's events: left out.
        if (e.get("ph") == "X" and e.get("pid") in keep
                and (device or not str(e.get("name", "")).startswith("$"))):
            total[e["name"]] += float(e.get("dur", 0.0))
            count[e["name"]] += 1
    return {"events": int(sum(count.values())), "busy_us": float(sum(total.values())),
            "top": [(n, us, count[n]) for n, us in total.most_common(top)],
            "where": "device" if device else "host"}
