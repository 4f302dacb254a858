"""Sweep spec -> points -> groups -> chunks.

An experiment's ``get_sweep()`` returns a list of points, each a dict from
dotted config fields to values. :func:`product` and :func:`zipped` build such
lists. Points that agree in every static field (all fields but the
per-member ones, :func:`deadjax.config.per_member_fields`) form a *group*,
trained as one population in one compiled program; a group is split into
chunks of at most ``train.max_population`` members.

Ids are content hashes, stable across runs: a point's id hashes its overrides,
a group's id hashes its static fields. Adding seeds to a sweep keeps every old
id, which is what lets a resumed sweep keep old results and train only new
points.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import ml_collections

from deadjax import config as config_lib
from deadjax.errors import ConfigError

Point = Mapping[str, Any]


# --------------------------------------------------------------------------
# Building sweeps
# --------------------------------------------------------------------------

def _as_points(spec) -> list[dict]:
    if isinstance(spec, Mapping):
        keys = list(spec)
        values = [list(v) if not isinstance(v, (str, bytes)) else [v] for v in spec.values()]
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    return [dict(p) for p in spec]


def product(*specs) -> list[dict]:
    """Cartesian product of sweep specs.

    Each spec is a dict from field to a list of values (itself a product over
    its keys) or a list of points. ``product({"seed": range(3)},
    {"model.activation": ["relu", "tanh"]})`` gives 6 points.
    """
    out = [{}]
    for spec in specs:
        out = [{**a, **b} for a in out for b in _as_points(spec)]
    return out


def zipped(spec: Mapping[str, Sequence]) -> list[dict]:
    """Points that pair the i-th values of every field:
    ``zipped({"optim.learning_rate": [1e-3, 1e-2], "train.steps": [100, 50]})``."""
    lengths = {k: len(list(v)) for k, v in spec.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"zipped fields must have equal lengths; got {lengths}.")
    keys = list(spec)
    return [dict(zip(keys, combo)) for combo in zip(*[list(v) for v in spec.values()])]


# --------------------------------------------------------------------------
# Experiments
# --------------------------------------------------------------------------

def load_experiment(path) -> tuple[ml_collections.ConfigDict, list[dict]]:
    """``(get_config(), get_sweep() or [{}])`` of an experiment file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config = {str(path)!r} is not a file; give an experiment "
                          "file such as experiments/mnist1d_mlp.py.")
    spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep = module.get_sweep() if hasattr(module, "get_sweep") else [{}]
    return module.get_config(), list(sweep)


# --------------------------------------------------------------------------
# Points and groups
# --------------------------------------------------------------------------

def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, ml_collections.ConfigDict):
        return {k: _jsonable(value[k]) for k in value.keys()}
    if hasattr(value, "item"):
        return value.item()
    return value


def canonical_json(obj) -> str:
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"))


def _hash(obj, n: int = 10) -> str:
    return hashlib.sha1(canonical_json(obj).encode()).hexdigest()[:n]


@dataclasses.dataclass
class PointSpec:
    id: str
    values: dict            # the point's own overrides (the sweep's view of it)
    config: ml_collections.ConfigDict
    group: str = ""
    chunk: int = -1


@dataclasses.dataclass
class Group:
    id: str
    config: ml_collections.ConfigDict   # a representative (static fields shared)
    points: list
    chunk_size: int = 0                 # members per chunk (runner.plan chooses it)
    chunk_note: str = ""                # how it was chosen


def static_fields(config) -> dict:
    flat = config_lib.flatten(config)
    per_member = set(config_lib.per_member_fields())
    return {k: _jsonable(v) for k, v in flat.items() if k not in per_member}


def resolve_points(base: ml_collections.ConfigDict, sweep: Iterable[Point],
                   overrides: Mapping[str, Any] | None = None) -> list[PointSpec]:
    """Applies each point's overrides, then the command-line ``overrides`` (which
    apply to every point and win), validates, and drops duplicate points."""
    overrides = dict(overrides or {})
    points, seen = [], set()
    for values in sweep:
        values = {k: v for k, v in dict(values).items()}
        cfg = ml_collections.ConfigDict(base.to_dict())
        for field, value in values.items():
            try:
                config_lib.get_field(cfg, field)
            except KeyError:
                raise ConfigError(f"the sweep sets {field} = {value!r}, but {field} is not "
                                  "a config field.") from None
            try:
                config_lib.set_field(cfg, field, _jsonable(value))
            except ConfigError as e:
                raise ConfigError(f"the sweep's point {_point_text(values)} sets "
                                  f"{str(e)[0].lower()}{str(e)[1:]}") from None
        for field, value in overrides.items():
            values.pop(field, None)
            config_lib.set_field(cfg, field, value)
        config_lib.validate(cfg)
        pid = "p" + _hash(values)
        if pid in seen:
            continue
        seen.add(pid)
        points.append(PointSpec(id=pid, values={k: _jsonable(v) for k, v in values.items()},
                                config=cfg))
    return points


def _point_text(values: Mapping) -> str:
    return "{" + ", ".join(f"{k}: {v!r}" for k, v in values.items()) + "}"


def group_points(points: list[PointSpec]) -> list[Group]:
    """Groups points by static fields, in order of first appearance.

    The run length (``train.steps``) is left out of a group's id unless the
    sweep itself varies it, so that a workdir resumed with more steps keeps
    its groups, checkpoints and results; so are the fields that only change
    what is recorded (``Field.recording``: evaluation and checkpoint
    intervals, chunk sizes, diagnostics), and fields added to deadjax later
    while they hold their defaults (``Field.added``). Points a workdir already
    holds keep the group id its ``points.jsonl`` records
    (:func:`keep_recorded_groups`), whatever the rule was when they were added.
    """
    groups: dict[str, Group] = {}
    defaults = static_fields(config_lib.default_config())
    run_length, added = set(config_lib.run_length_fields()), set(config_lib.added_fields())
    recording = set(config_lib.recording_fields())
    for p in points:
        key = {k: v for k, v in static_fields(p.config).items()
               if (k not in run_length or k in p.values) and k not in recording
               and not (k in added and v == defaults.get(k))}
        gid = "g" + _hash(key, 8)
        p.group = gid
        groups.setdefault(gid, Group(gid, p.config, [])).points.append(p)
    return list(groups.values())


def keep_recorded_groups(groups: list[Group], known: Mapping[str, dict]) -> list[Group]:
    """``groups`` with every point a workdir already holds back in the group
    its record names (ids computed by an earlier rule, e.g. one that still
    hashed the evaluation interval): a group splits where its points were
    recorded under different ids; order of first appearance is kept."""
    out: dict[str, Group] = {}
    for g in groups:
        for p in g.points:
            gid = known[p.id]["group"] if p.id in known else g.id
            p.group = gid
            out.setdefault(gid, Group(gid, g.config, [], g.chunk_size, g.chunk_note)) \
                .points.append(p)
    return list(out.values())


def chunks(points: Sequence, size: int) -> list[list]:
    return [list(points[i:i + size]) for i in range(0, len(points), size)]


def swept_fields(points: Sequence[PointSpec]) -> list[str]:
    """Fields set by any point, in order of first appearance."""
    out: list[str] = []
    for p in points:
        for k in p.values:
            if k not in out:
                out.append(k)
    return out
