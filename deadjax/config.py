"""The experiment config: every field, its default, and its validation.

An experiment file (``experiments/NAME.py``) starts from :func:`default_config`
and changes what it needs. :func:`validate` checks a resolved point before
anything compiles or touches the workdir, and raises :class:`ConfigError` with
one sentence naming the field, the value and what is allowed.

Fields are either *per-member* (traced arrays with a leading member axis, so a
sweep over them is one population) or *static* (points that differ in them are
different groups, each its own compiled program). ``PER_MEMBER_FIELDS`` lists
the former; every other field is static.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

# Fields whose values are traced per member (DESIGN.md, "The one idea").
PER_MEMBER_FIELDS = (
    "seed",
    "optim.learning_rate",
    "optim.weight_decay",
    "optim.momentum",
    "model.sigma_w",
    "model.sigma_b",
    "model.leaky_slope",
    "model.dropout",
    "interventions.method",
    "interventions.redo_tau",
    "interventions.reset_slope",
    "interventions.shrink",
    "interventions.noise",
    "interventions.replacement_rate",
    "interventions.maturity",
    "interventions.utility_decay",
)

# Fields that may differ between a workdir's config and a rerun without making
# it another experiment (DESIGN.md: "anything but run length").
RUN_LENGTH_FIELDS = ("train.steps",)


# Fields added after workdirs existed. A workdir's config.json without one
# reads as if it held the default, and a group's id leaves the field out while
# it has its default, so those workdirs keep their groups, checkpoints and
# results (sweep.group_points, runner.check_same_experiment).
ADDED_FIELDS = ("diagnostics.full_every", "data.task", "data.task_every",
                "data.flipping_bits", "interventions.method", "interventions.every",
                "interventions.redo_tau", "interventions.reset_activation",
                "interventions.reset_slope", "interventions.shrink", "interventions.noise",
                "interventions.replacement_rate", "interventions.maturity",
                "interventions.utility_decay")

# Remedies that act during training (deadjax.interventions); "none" is off.
INTERVENTIONS = ("none", "activation_reset", "redo", "continual_backprop", "shrink_perturb")

# Non-stationary variants of a classification dataset (deadjax.tasks).
TASKS = ("stationary", "permuted_inputs", "shuffled_labels")

# Datasets whose targets are real numbers (train.loss = "mse").
REGRESSION_DATASETS = ("slowly_changing_regression",)


class ConfigError(ValueError):
    """A config value that is not allowed; the message is one sentence for the user."""


def default_config() -> ml_collections.ConfigDict:
    """Every config field with its default (DESIGN.md, "Config fields")."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "mnist1d"
    c.data.seed = 0
    c.data.path = ""
    c.data.num_train = 1000
    c.data.num_test = 1000
    c.data.num_features = 784
    c.data.num_classes = 10
    c.data.val_fraction = 0.1
    c.data.batch_size = 128
    c.data.order = "shuffle"
    c.data.standardize = True
    c.data.task = "stationary"
    c.data.task_every = 1000
    c.data.flipping_bits = 15

    c.model = ml_collections.ConfigDict()
    c.model.widths = (128, 128)
    c.model.activation = "relu"
    c.model.leaky_slope = 0.01
    c.model.kernel_init = "he_normal"
    c.model.bias_init = "zeros"
    c.model.init_mode = "fan_in"
    c.model.init_gain = 1.0
    c.model.bias_value = 0.0
    c.model.sigma_w = 1.0
    c.model.sigma_b = 0.0
    c.model.norm = "none"
    c.model.dropout = 0.0
    c.model.residual = False

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3
    c.optim.weight_decay = 0.0
    c.optim.momentum = 0.9
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.clip_norm = 0.0

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.eval_every = 100
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.train.max_population = 256
    c.train.memory_budget_gb = 0.0
    c.train.loss = "cross_entropy"
    c.train.precision = "highest"
    c.train.eval_batch_size = 4096

    c.diagnostics = ml_collections.ConfigDict()
    c.diagnostics.enabled = True
    c.diagnostics.probe_size = 1024
    c.diagnostics.dormant_taus = (0.0, 0.025, 0.1)
    c.diagnostics.dead_threshold = 0.0
    c.diagnostics.saturation_threshold = 0.01
    c.diagnostics.jacobian_probe_size = 8
    c.diagnostics.families = ("dead", "dormant", "saturation", "gradients",
                              "signal", "jacobian", "rank", "output")
    c.diagnostics.histogram_bins = 41
    c.diagnostics.full_every = 20

    c.interventions = ml_collections.ConfigDict()
    c.interventions.method = "none"
    c.interventions.every = 100
    c.interventions.redo_tau = 0.1
    c.interventions.reset_activation = "leaky_relu"
    c.interventions.reset_slope = 0.01
    c.interventions.shrink = 0.9
    c.interventions.noise = 0.01
    c.interventions.replacement_rate = 1e-4
    c.interventions.maturity = 100
    c.interventions.utility_decay = 0.99
    return c


# --------------------------------------------------------------------------
# Access by dotted name
# --------------------------------------------------------------------------

def get_field(config: ml_collections.ConfigDict, dotted: str) -> Any:
    """``config['a.b']`` for a dotted name; KeyError if it does not exist."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """Sets ``config['a.b'] = value``; ConfigError if the field does not exist."""
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"{dotted} is not a config field; known sections are "
                              f"{', '.join(sorted(k for k in config.keys()))}.")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ConfigError(f"{dotted} is not a config field; fields of "
                          f"{'.'.join(parents) or 'the config'} are "
                          f"{', '.join(sorted(node.keys()))}.")
    old = node[leaf]
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    with node.unlocked() if hasattr(node, "unlocked") else _null():
        node[leaf] = value


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf field."""
    out: dict[str, Any] = {}
    for key in config.keys():
        value = config[key]
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------

def _allowed(field: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{field} = {value!r} is not allowed; choose one of "
                          f"{', '.join(repr(a) for a in allowed)}.")


def _number(field: str, value: Any, *, low=None, high=None, low_open=False,
            high_open=False, integer=False, what="") -> None:
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or (
            not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"{field} = {value!r} is not allowed; it must be {kind}"
                          f"{' ' + what if what else ''}.")
    bad = ((low is not None and (value <= low if low_open else value < low)) or
           (high is not None and (value >= high if high_open else value > high)))
    if bad:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}, "
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        rng = (f"in {lo}{hi}" if low is not None and high is not None else
               (f"{'>' if low_open else '>='} {low}" if low is not None else
                f"{'<' if high_open else '<='} {high}"))
        raise ConfigError(f"{field} = {value!r} is not allowed; it must be {rng}"
                          f"{' ' + what if what else ''}.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every field of one resolved point; raises ConfigError on the first bad one."""
    from deadjax import activations, data, initializers, optim  # registries

    _number("seed", config.seed, low=0, integer=True)
    d = config.data
    _allowed("data.name", d.name, data.DATASETS)
    _number("data.seed", d.seed, low=0, integer=True)
    _number("data.num_train", d.num_train, low=2, integer=True)
    _number("data.num_test", d.num_test, low=1, integer=True)
    _number("data.num_features", d.num_features, low=1, integer=True)
    _number("data.num_classes", d.num_classes, low=2, integer=True)
    _number("data.val_fraction", d.val_fraction, low=0.0, high=1.0, high_open=True)
    _number("data.batch_size", d.batch_size, low=0, integer=True,
            what="(0 means full batch)")
    _allowed("data.order", d.order, ("shuffle", "sequential", "shared"))
    _allowed("data.task", d.task, TASKS)
    _number("data.task_every", d.task_every, low=1, integer=True)
    if d.name in REGRESSION_DATASETS:
        _number("data.num_features", d.num_features, low=2, integer=True,
                what=f"(input bits of {d.name})")
        _number("data.flipping_bits", d.flipping_bits, low=1, high=d.num_features,
                integer=True, what="(at most data.num_features)")
        if d.task != "stationary":
            raise ConfigError(f"data.task = {d.task!r} is not allowed for data.name = "
                              f"{d.name!r}, which changes by itself; use 'stationary'.")
        if d.batch_size == 0:
            raise ConfigError(f"data.batch_size = 0 is not allowed for data.name = "
                              f"{d.name!r}; a stream has no full batch (use 1 or more).")
    if d.name in ("mnist", "fashion_mnist") and not d.path:
        raise ConfigError(f"data.path = {d.path!r} is not allowed for data.name = "
                          f"{d.name!r}; give the folder that holds the downloaded files.")

    m = config.model
    if not isinstance(m.widths, (tuple, list)) or any(
            isinstance(w, bool) or not isinstance(w, int) or w <= 0 for w in m.widths):
        raise ConfigError(f"model.widths = {m.widths!r} is not allowed; it must be a "
                          "tuple of positive integers (() is a linear model).")
    activations.get(m.activation, field="model.activation")
    _number("model.leaky_slope", m.leaky_slope)
    initializers.check_kernel_init(m.kernel_init, field="model.kernel_init")
    initializers.check_bias_init(m.bias_init, field="model.bias_init")
    _allowed("model.init_mode", m.init_mode, ("fan_in", "fan_out"))
    _number("model.init_gain", m.init_gain, low=0.0, low_open=True)
    _number("model.bias_value", m.bias_value)
    _number("model.sigma_w", m.sigma_w, low=0.0)
    _number("model.sigma_b", m.sigma_b, low=0.0)
    _allowed("model.norm", m.norm, ("none", "batch", "layer"))
    _number("model.dropout", m.dropout, low=0.0, high=1.0, high_open=True)
    if not isinstance(m.residual, bool):
        raise ConfigError(f"model.residual = {m.residual!r} is not allowed; it must be "
                          "True or False.")

    o = config.optim
    _allowed("optim.name", o.name, optim.OPTIMIZERS)
    _number("optim.learning_rate", o.learning_rate, low=0.0, low_open=True)
    _number("optim.weight_decay", o.weight_decay, low=0.0)
    _number("optim.momentum", o.momentum, low=0.0, high=1.0, high_open=True)
    _allowed("optim.schedule", o.schedule, optim.SCHEDULES)
    _number("optim.warmup_steps", o.warmup_steps, low=0, integer=True)
    _number("optim.clip_norm", o.clip_norm, low=0.0, what="(0 means no clipping)")

    t = config.train
    _number("train.steps", t.steps, low=0, integer=True)
    _number("train.eval_every", t.eval_every, low=1, integer=True)
    _number("train.checkpoint_every", t.checkpoint_every, low=1, integer=True)
    _number("train.max_population", t.max_population, low=1, integer=True)
    _number("train.keep_checkpoints", t.keep_checkpoints, low=1, integer=True)
    _number("train.memory_budget_gb", t.memory_budget_gb, low=0.0,
            what="(0 means chunks of train.max_population members)")
    _allowed("train.loss", t.loss, ("cross_entropy", "mse"))
    wanted = "mse" if d.name in REGRESSION_DATASETS else "cross_entropy"
    if t.loss != wanted:
        raise ConfigError(f"train.loss = {t.loss!r} is not allowed for data.name = "
                          f"{d.name!r}; its targets need {wanted!r}.")
    _allowed("train.precision", t.precision, ("highest", "tf32", "bf16"))
    _number("train.eval_batch_size", t.eval_batch_size, low=1, integer=True)
    if t.checkpoint_every % t.eval_every:
        raise ConfigError(f"train.checkpoint_every = {t.checkpoint_every} is not allowed; "
                          f"it must be a multiple of train.eval_every = {t.eval_every}.")

    g = config.diagnostics
    if not isinstance(g.enabled, bool):
        raise ConfigError(f"diagnostics.enabled = {g.enabled!r} is not allowed; it must "
                          "be True or False.")
    _number("diagnostics.probe_size", g.probe_size, low=1, integer=True)
    _number("diagnostics.jacobian_probe_size", g.jacobian_probe_size, low=1, integer=True)
    _number("diagnostics.dead_threshold", g.dead_threshold, low=0.0, high=1.0,
            high_open=True)
    _number("diagnostics.saturation_threshold", g.saturation_threshold, low=0.0,
            high=1.0, low_open=True, high_open=True)
    _number("diagnostics.histogram_bins", g.histogram_bins, low=2, integer=True)
    _number("diagnostics.full_every", g.full_every, low=1, integer=True)
    if not isinstance(g.dormant_taus, (tuple, list)) or not g.dormant_taus:
        raise ConfigError(f"diagnostics.dormant_taus = {g.dormant_taus!r} is not allowed; "
                          "it must be a non-empty tuple of numbers >= 0.")
    for tau in g.dormant_taus:
        _number("diagnostics.dormant_taus", tau, low=0.0)
    from deadjax import metrics
    for fam in g.families:
        _allowed("diagnostics.families", fam, metrics.DIAGNOSTIC_FAMILIES)

    v = config.interventions
    _allowed("interventions.method", v.method, INTERVENTIONS)
    _number("interventions.every", v.every, low=1, integer=True)
    _number("interventions.redo_tau", v.redo_tau, low=0.0)
    alt = activations.get(v.reset_activation, field="interventions.reset_activation")
    if alt.learnable_slope:
        raise ConfigError(f"interventions.reset_activation = {v.reset_activation!r} is not "
                          "allowed; a switched unit has no learnable slope (use leaky_relu).")
    _number("interventions.reset_slope", v.reset_slope)
    _number("interventions.shrink", v.shrink, low=0.0)
    _number("interventions.noise", v.noise, low=0.0)
    _number("interventions.replacement_rate", v.replacement_rate, low=0.0, high=1.0)
    _number("interventions.maturity", v.maturity, low=0, integer=True)
    _number("interventions.utility_decay", v.utility_decay, low=0.0, high=1.0,
            high_open=True)
    if v.method != "none" and not m.widths:
        raise ConfigError(f"interventions.method = {v.method!r} is not allowed for "
                          "model.widths = (); a linear model has no hidden units.")
