"""Orbax checkpoints of population state: save, restore, resume, load one member.

Layout (DESIGN.md, "Workdir"): one Orbax ``CheckpointManager`` per group and
chunk, in ``DIR/checkpoints/<group>/chunk_<kkkk>/``::

    DIR/checkpoints/<group>/chunk_0000/
        2000/                     one finalised step (Orbax's atomic rename)
            state/                the stacked MemberState of the chunk's REAL members
            metadata/metadata     JSON: group, chunk, step, points, config, leaves
        3000/ ...                 the last ``max_to_keep`` steps are kept
        4000.orbax-checkpoint-tmp-...   a save cut short by a kill (ignored, cleaned)
    DIR/checkpoints/<group>/chunk_0000.corrupt/3000-<time>/
                                  a finalised step that failed to restore, moved
                                  aside by a resuming run (kept for inspection)

``state`` is the whole :class:`deadjax.population.MemberState` with a leading
member axis (parameters, BatchNorm statistics, the optax state with every
member's injected hyperparameters, PRNG keys, divergence flags and the
diagnostic carry), for the chunk's real members only: padding never reaches a
checkpoint. The metadata JSON holds ``{"format", "group", "chunk", "step",
"points": [ordered point ids, one per member row], "config", "saved_at",
"leaves": {path: {"shape", "dtype", "crc32"}}}`` plus whatever else the caller
adds. The per-leaf CRC-32 is what makes a checkpoint whose files were
corrupted after finalisation detectable: Orbax stores arrays uncompressed and
without checksums, so a flipped byte would otherwise restore silently (a
truncated file does raise).

Resume: :meth:`ChunkCheckpointer.restore_latest` walks the steps from newest
to oldest and returns the first one that restores and verifies; a step that
does not is reported with a :class:`CheckpointWarning` naming it, moved aside
(so that the resumed run can save that step number again) and the previous
step is tried. Orbax's own temporary directories (a save killed before its
atomic rename) are never listed as steps and are removed when a writer opens
the chunk.

Analysis: :func:`load_member` returns one point's latest state, unstacked, as
NumPy arrays, without building the model (the raw tree is restored without a
target).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import re
import shutil
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from deadjax import errors

log = logging.getLogger("deadjax")

FORMAT = 1
STATE, METADATA = "state", "metadata"


class CheckpointWarning(UserWarning):
    """A checkpoint step could not be restored and was skipped."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint step's arrays do not match the checksums it was saved with."""


# --------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------

def checkpoint_dir(workdir, group_id: str, chunk: int) -> Path:
    """``DIR/checkpoints/<group>/chunk_<kkkk>`` as an absolute path."""
    return (Path(workdir).expanduser().absolute() / "checkpoints" / str(group_id)
            / f"chunk_{int(chunk):04d}")


def _quarantine_dir(directory: Path) -> Path:
    return directory.with_name(directory.name + ".corrupt")


# --------------------------------------------------------------------------
# Trees
# --------------------------------------------------------------------------

def _key_name(k) -> str:
    tu = jax.tree_util
    if isinstance(k, tu.DictKey):
        return str(k.key)
    if isinstance(k, tu.GetAttrKey):
        return k.name
    if isinstance(k, tu.SequenceKey):
        return str(k.idx)
    if isinstance(k, tu.FlattenedIndexKey):
        return str(k.key)
    return str(k)


def leaf_paths(tree) -> list[tuple[str, Any]]:
    """``[("opt_state/inner_state/0/mu/Dense_0/kernel", leaf), ...]``.

    The same strings for a structured state (dataclass fields, namedtuple
    fields, tuple indices, dict keys) and for the raw nested dicts/lists that
    Orbax restores without a target, so checksums match either way.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [("/".join(_key_name(k) for k in path), leaf) for path, leaf in flat]


# Parts of a state a checkpoint may lack entries of, or hold entries in
# excess of, the template: the per-member hyperparameters (a pure function of
# the points' configs), the diagnostic families' carries (a family added,
# chosen or dropped since the checkpoint was written) and the remedies' record
# of when each unit was last reset (added after remedies). Missing entries
# come from the template (the configs' values; the initial carries; "never"),
# excess ones are left out. Every other leaf must match.
ADAPTABLE = ("hparams", "carry", "interventions/last_reset")


def _adaptable(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in ADAPTABLE)


def _fill(template, saved: dict, where: Path):
    """``template``'s structure with every leaf from ``saved`` (leaf path ->
    array, the checkpoint as stored); raises :class:`_TemplateMismatch` when
    they differ in anything but :data:`ADAPTABLE` entries or in a shape or
    dtype (the member axis aside)."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    paths = [p for p, _ in leaf_paths(template)]
    differ = sorted(p for p in set(paths) ^ set(saved) if not _adaptable(p))
    if differ:
        raise _TemplateMismatch(
            f"the template does not fit checkpoint {where}: leaf {differ[0]!r} is in "
            f"{'the template' if differ[0] in paths else 'the checkpoint'} only "
            f"({len(differ)} leaves differ); was the model or optimiser config changed?")
    out = []
    for p, t in zip(paths, leaves):
        if p not in saved:
            out.append(t)
            continue
        a = saved[p]
        if tuple(np.shape(a))[1:] != tuple(np.shape(t))[1:] or np.dtype(a.dtype) != np.dtype(t.dtype):
            raise _TemplateMismatch(
                f"the template does not fit checkpoint {where}: leaf {p!r} is "
                f"{np.dtype(t.dtype)}{list(np.shape(t))[1:]} per member in the template but "
                f"{np.dtype(a.dtype)}{list(np.shape(a))[1:]} in the checkpoint.")
        out.append(a)
    return jax.tree_util.tree_unflatten(treedef, out)


def _crc32(a: np.ndarray) -> int:
    a = np.ascontiguousarray(a)
    return zlib.crc32(a.reshape(-1).view(np.uint8)) if a.size else 0


def _to_host(tree):
    """Host copies of every leaf that nothing else owns (NumPy arrays).

    ``jax.Array`` leaves are copied, in one batched call, to a fresh buffer on
    the host CPU device (``device_put(..., may_alias=False)``) and viewed as
    NumPy: the original device arrays are not referenced afterwards (no
    ``_npy_value`` cache on them), so the caller may donate or overwrite them
    as soon as :meth:`ChunkCheckpointer.save` returns, and a donation cannot
    reach the arrays being written. NumPy leaves are copied.
    """
    leaves, treedef = jax.tree.flatten(tree)
    out = [None if isinstance(a, jax.Array) else np.array(a, copy=True) for a in leaves]
    idx = [i for i, a in enumerate(out) if a is None]
    if idx:
        on_device = [leaves[i] for i in idx]
        try:
            copies = jax.device_put(on_device, jax.devices("cpu")[0], may_alias=False)
            host = [np.asarray(c) for c in copies]
        except RuntimeError:  # no CPU backend (JAX_PLATFORMS without cpu)
            host = [np.array(a, copy=True) for a in jax.device_get(on_device)]
        for i, h in zip(idx, host):
            out[i] = h
    return jax.tree.unflatten(treedef, out)


def _local_device():
    """This process's first CPU device (its first device without a CPU backend)."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return jax.local_devices()[0]


def _on_local_device(abstract):
    """``abstract`` (ShapeDtypeStructs) placed whole on :func:`_local_device`.

    A checkpoint saved collectively holds arrays sharded over the saving
    run's devices; Orbax restores it onto another topology only when told
    the target sharding, so every process restores every member whole and
    the caller shards them over its own devices."""
    sharding = jax.sharding.SingleDeviceSharding(_local_device())
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        abstract)


def _saved_abstract(step_dir: Path):
    """The saved state's tree as ShapeDtypeStructs, from Orbax's metadata."""
    tree = ocp.StandardCheckpointer().metadata(step_dir / STATE).item_metadata.tree
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree,
                        is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))


def _jsonable(value):
    if isinstance(value, Mapping) or hasattr(value, "to_dict"):
        items = value.to_dict().items() if hasattr(value, "to_dict") else value.items()
        return {str(k): _jsonable(v) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no NaN/inf
    return value


def _natural(key: str):
    m = re.fullmatch(r"(.*?)(\d+)", key)
    return (m.group(1), int(m.group(2)), "") if m else (key, -1, key)


def _ordered(tree):
    """Dicts in natural key order (Dense_2 before Dense_10), recursively."""
    if isinstance(tree, dict):
        return {k: _ordered(tree[k]) for k in sorted(tree, key=lambda k: _natural(str(k)))}
    if isinstance(tree, list):
        return [_ordered(v) for v in tree]
    return tree


# --------------------------------------------------------------------------
# Orbax
# --------------------------------------------------------------------------

def _manager(directory: Path, *, max_to_keep=None, read_only=False,
             asynchronous=True) -> ocp.CheckpointManager:
    # Orbax would remove unfinished saves in a background thread of every
    # manager it opens, and two managers opened one after the other on the
    # same folder then race to delete the same directory; a writer removes
    # them itself, before opening (remove_unfinished_saves).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=asynchronous, cleanup_tmp_directories=False)
    return ocp.CheckpointManager(directory, options=options)


def step_metadata(workdir, group_id: str, chunk: int, step: int) -> dict | None:
    """The metadata JSON a checkpoint step was saved with, read from its file
    (``<step>/metadata/metadata``), or None where it cannot be read."""
    path = checkpoint_dir(workdir, group_id, chunk) / str(step) / METADATA / METADATA
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def remove_unfinished_saves(directory: Path) -> list[Path]:
    """Removes the temporary folders of saves a kill cut short (Orbax's
    ``<step>.orbax-checkpoint-tmp*``, never listed as steps); returns them."""
    directory = Path(directory)
    found = sorted(directory.glob("*.orbax-checkpoint-tmp*")) if directory.is_dir() else []
    for tmp in found:
        shutil.rmtree(tmp, ignore_errors=True)
    return found


def latest_step(workdir, group_id: str, chunk: int) -> int | None:
    """The newest finalised checkpoint step of a chunk, or None: read from the
    folder names (Orbax renames a step's folder to its number only once the
    save is complete), without opening a manager."""
    directory = checkpoint_dir(workdir, group_id, chunk)
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()] \
        if directory.is_dir() else []
    return max(steps, default=None)


def _restore_metadata(manager, step: int) -> dict:
    out = manager.restore(step, args=ocp.args.Composite(**{METADATA: ocp.args.JsonRestore()}))
    record = out[METADATA]
    if not isinstance(record, dict) or "leaves" not in record or "points" not in record:
        raise CorruptCheckpointError(f"its {METADATA} JSON lacks 'leaves' or 'points'")
    return record


def _verify(state, record: dict) -> None:
    """Raises CorruptCheckpointError unless every leaf matches its saved checksum."""
    expected = record["leaves"]
    got = dict(leaf_paths(state))
    if set(got) != set(expected):
        missing = sorted(set(expected) ^ set(got))
        raise CorruptCheckpointError(f"its arrays differ from its metadata at {missing[:3]}")
    for path, info in expected.items():
        a = np.asarray(got[path])
        if (list(a.shape) != list(info["shape"]) or str(a.dtype) != info["dtype"]
                or _crc32(a) != info["crc32"]):
            raise CorruptCheckpointError(f"array {path} does not match its saved checksum")


def _describe(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


def _warn_skip(directory: Path, step: int, e: BaseException, moved: Path | None) -> None:
    where = f"; moved to {moved}" if moved else ""
    warnings.warn(
        f"checkpoint {directory / str(step)} could not be restored ({_describe(e)}); "
        f"skipping it and using an earlier step{where}.", CheckpointWarning, stacklevel=3)


# --------------------------------------------------------------------------
# Writer / resumer of one chunk
# --------------------------------------------------------------------------

class ChunkCheckpointer:
    """The checkpoints of one chunk of one group (an Orbax CheckpointManager).

    ::

        ckpt = ChunkCheckpointer(workdir, group.id, chunk, max_to_keep=3)
        found = ckpt.restore_latest(template)       # None: start from scratch
        ...
        ckpt.save(step, real_members_state, {"points": ids, "config": cfg})
        ...
        ckpt.close()                                 # waits for the last save

    Saves are asynchronous: :meth:`save` copies the state to host memory and
    returns while Orbax writes it in a background thread; the next save (or
    :meth:`wait`, :meth:`close`) waits for the previous one to finish.
    """

    def __init__(self, workdir, group_id: str, chunk: int, *, max_to_keep: int | None = 3,
                 asynchronous: bool = True):
        self.workdir = Path(workdir).expanduser().absolute()
        self.group_id = str(group_id)
        self.chunk = int(chunk)
        self.directory = checkpoint_dir(self.workdir, self.group_id, self.chunk)
        remove_unfinished_saves(self.directory)
        self._manager = _manager(self.directory, max_to_keep=max_to_keep,
                                 asynchronous=asynchronous)

    # ---------------------------------------------------------------- saving
    def save(self, step: int, state, metadata: Mapping) -> bool:
        """Starts saving ``state`` (real members only) as ``step``; returns at once.

        ``metadata`` must hold ``"points"``, the ordered point ids of the
        state's member rows, and should hold ``"config"``; ``group``,
        ``chunk``, ``step``, ``saved_at`` and the per-leaf checksums are added
        here. The blocking part is the device-to-host copy (into fresh host
        buffers, so the caller may donate or overwrite the arrays it passed
        as soon as this returns, and they stay donatable), the CRC-32s, and
        Orbax's own synchronous copy of host arrays (its NumPy handler
        deep-copies them before writing in the background); about 0.2-0.3 s
        for 91 MB on 2 CPU cores. The next save first waits for this one.
        A step at or below the newest saved step is skipped (returns False).
        """
        step = int(step)
        latest = self._manager.latest_step()
        if latest is not None and step <= latest:
            log.info("checkpoint step %d of %s skipped: step %d is already saved",
                     step, self.directory, latest)
            return False
        points = [str(p) for p in metadata.get("points", ())]
        # Several processes (jax.distributed): every process calls save with the
        # same global arrays, Orbax writes each process's shards (a collective
        # save), and the checksums come from a gathered copy.
        collective = jax.process_count() > 1
        host = multihost_utils.process_allgather(state, tiled=True) if collective \
            else _to_host(state)
        leaves = leaf_paths(host)
        if not points:
            raise ValueError("ChunkCheckpointer.save needs metadata['points'], the ordered "
                             "point ids of the state's member rows.")
        bad = [p for p, a in leaves if a.ndim == 0 or a.shape[0] != len(points)]
        if bad:
            raise ValueError(
                f"ChunkCheckpointer.save got {len(points)} point ids but leaf {bad[0]!r} has "
                f"shape {np.shape(dict(leaves)[bad[0]])}; every leaf needs a leading member "
                "axis of that length (pass the real members only, padding sliced off).")
        record = _jsonable(dict(metadata))
        record.update(
            format=FORMAT, group=self.group_id, chunk=self.chunk, step=step, points=points,
            num_members=len(points),
            saved_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            leaves={p: {"shape": list(a.shape), "dtype": str(a.dtype), "crc32": _crc32(a)}
                    for p, a in leaves})
        record.setdefault("config", {})
        record["collective"] = collective
        try:  # (also raises what the previous save's background writes met)
            return bool(self._manager.save(step, args=ocp.args.Composite(**{
                STATE: ocp.args.StandardSave(state if collective else host),
                METADATA: ocp.args.JsonSave(record)})))
        except Exception as e:  # noqa: BLE001 - Orbax and tensorstore raise many kinds
            raise errors.fault(e, self.directory, "saving a checkpoint in") from None

    # ------------------------------------------------------------- restoring
    def restore_latest(self, template, points: Sequence[str] | None = None,
                       *, quarantine: bool = True, before: int | None = None):
        """``(step, state, metadata)`` of the newest step that restores cleanly, or None.

        ``template`` gives the structure: a concrete state or
        ``jax.eval_shape`` of one, with the saved number of members (or
        ``len(points)`` members, see below). Leaves come back as they are in
        the template: a ``jax.Array`` or ``ShapeDtypeStruct`` leaf as a
        ``jax.Array`` (on its sharding, if it has one), a NumPy leaf as NumPy.

        ``points``: the ids of the template's member rows. When given and
        the checkpoint holds them in another order or among others, their
        rows are selected; a point the checkpoint lacks is a ValueError.
        ``before``: only steps below it are considered (retraining from an
        earlier step to rewrite damaged results).

        Adaptable entries (:data:`ADAPTABLE`: per-member hyperparameters and
        the diagnostic families' carries) that the checkpoint lacks, e.g. a
        hyperparameter added after it was written, come from ``template``,
        which must then hold their values (the fresh initialisation's);
        entries it holds in excess are left out.

        A step that fails to restore (a file truncated or corrupted by a
        kill or a bad disk: Orbax errors, undecodable JSON, checksum
        mismatch) is skipped with a :class:`CheckpointWarning` naming it and,
        with ``quarantine``, moved to ``chunk_<kkkk>.corrupt/`` so that the
        resumed run can save that step again. A template that does not fit
        the checkpoint (other leaves, shapes or dtypes) is a ValueError, not
        corruption: nothing is skipped or moved for it.
        """
        self._manager.wait_until_finished()
        self._manager.reload()
        for step in sorted(self._manager.all_steps(), reverse=True):
            if before is not None and step >= before:
                continue
            where = self.directory / str(step)
            try:
                record = _restore_metadata(self._manager, step)
                rows = _rows(record, points, where)
                # The tree as stored, whole on this process's device, then
                # checked against its checksums and fitted into the template.
                target = _on_local_device(_saved_abstract(where))
                out = self._manager.restore(step, args=ocp.args.Composite(**{
                    STATE: ocp.args.StandardRestore(target), METADATA: ocp.args.JsonRestore()}))
                _verify(out[STATE], record)
                saved = dict(leaf_paths(out[STATE]))
            except _TemplateMismatch as e:
                raise ValueError(str(e)) from None
            except Exception as e:  # noqa: BLE001 - any failure to read a step is corruption
                moved = self._quarantine(step) if quarantine else None
                _warn_skip(self.directory, step, e, moved)
                continue
            if rows is not None:
                saved = {p: np.asarray(a)[rows] for p, a in saved.items()}
            n = len(record["points"]) if rows is None else len(rows)
            n_template = np.shape(jax.tree.leaves(template)[0])[0]
            if n != n_template:
                raise ValueError(f"the template does not fit checkpoint {where}: it has "
                                 f"{n_template} members but {n} are restored.")
            try:
                state = _fill(template, saved, where)
            except _TemplateMismatch as e:
                raise ValueError(str(e)) from None
            return step, _place(state, template), record
        return None

    def _quarantine(self, step: int) -> Path | None:
        src = self.directory / str(step)
        if not src.exists():
            return None
        dest_root = _quarantine_dir(self.directory)
        dest_root.mkdir(parents=True, exist_ok=True)
        dest = dest_root / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
        i = 1
        while dest.exists():
            dest, i = dest_root / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}-{i}", i + 1
        try:
            shutil.move(str(src), str(dest))
        except OSError as e:
            log.warning("could not move corrupt checkpoint %s aside: %s", src, e)
            return None
        self._manager.reload()
        return dest

    # ------------------------------------------------------------- lifecycle
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def wait(self) -> None:
        """Blocks until every started save is written and finalised; a save
        that failed in the background raises :class:`WorkdirFault`."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise errors.fault(e, self.directory, "saving a checkpoint in") from None

    def close(self) -> None:
        """Waits for the last save, then releases the manager's threads."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
            return
        try:  # already failing: the first error is the one to report
            self.close()
        except Exception:  # noqa: BLE001
            pass


class _TemplateMismatch(Exception):
    pass


def _rows(record: dict, points, where: Path):
    if points is None:
        return None
    points = [str(p) for p in points]
    saved = list(record["points"])
    if points == saved:
        return None
    missing = [p for p in points if p not in saved]
    if missing:
        raise _TemplateMismatch(
            f"checkpoint {where} holds points {saved[:4]}{'...' if len(saved) > 4 else ''} "
            f"but not {missing[0]!r}; resume the chunk with the points it was saved with.")
    return np.asarray([saved.index(p) for p in points])


def _place(state, template):
    def put(a, t):
        if isinstance(t, np.ndarray):
            return np.asarray(a)
        if isinstance(t, jax.Array):
            return jax.device_put(a, t.sharding)
        sharding = getattr(t, "sharding", None)
        return jax.device_put(a, sharding) if sharding is not None else jax.device_put(a)
    return jax.tree.map(put, state, template)


# --------------------------------------------------------------------------
# Analysis: one member
# --------------------------------------------------------------------------

def _point_record(workdir: Path, point: str) -> dict:
    path = workdir / "points.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{workdir} has no points.jsonl; give the --workdir of a "
                                "deadjax sweep.")
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("point") == point:
                return r
    raise KeyError(f"point {point!r} is not in {path}; see that file (or "
                   "deadjax.load_results(workdir)['point']) for the known ids.")


def _scalar(a, kind):
    return kind(np.asarray(a).item())


def load_member(workdir, point: str) -> dict:
    """That point's latest saved state, unstacked, as NumPy arrays.

    Returns ``{"params": Flax-layout dict (Dense kernels shaped (in, out),
    layers in order Dense_0, Dense_1, ...), "step": int, "batch_stats",
    "opt_state" (the optax state as nested dicts/lists: count, hyperparams,
    inner_state, ...), "hparams": {name: float}, "key", "data_key",
    "diverged": bool, "diverged_step": int, "update_ratio", "prev_dead",
    "has_prev": bool, "born_dead": bool, "point", "group", "chunk",
    "checkpoint_step", "config"}``. The model is not built: the raw tree is
    restored without a target. The member's row in its chunk comes from the
    checkpoint's ordered point list. A step that fails to restore is skipped
    with a :class:`CheckpointWarning` (nothing is moved: this is read-only).

    Raises FileNotFoundError when the workdir or the point's checkpoint does
    not exist yet, KeyError for an unknown point.
    """
    workdir = Path(workdir).expanduser().absolute()
    point = str(point)
    info = _point_record(workdir, point)
    group, chunk = str(info["group"]), int(info["chunk"])
    directory = checkpoint_dir(workdir, group, chunk)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"point {point!r} (group {group}, chunk {chunk}) has no checkpoint yet: "
            f"{directory} does not exist (checkpoints are written every "
            "train.checkpoint_every steps and at the end).")
    manager = _manager(directory, read_only=True, asynchronous=False)
    try:
        steps = sorted(manager.all_steps(), reverse=True)
        for step in steps:
            try:
                record = _restore_metadata(manager, step)
                if point not in record["points"]:
                    raise KeyError(f"point {point!r} is not among the points of checkpoint "
                                   f"{directory / str(step)}.")
                target = (_on_local_device(_saved_abstract(directory / str(step)))
                          if record.get("collective") else None)
                out = manager.restore(step, args=ocp.args.Composite(**{
                    STATE: ocp.args.StandardRestore(target), METADATA: ocp.args.JsonRestore()}))
                raw = out[STATE]
                _verify(raw, record)
            except KeyError:
                raise
            except Exception as e:  # noqa: BLE001
                _warn_skip(directory, step, e, None)
                continue
            return _unstack(raw, record, record["points"].index(point), step)
    finally:
        manager.close()
    raise FileNotFoundError(
        f"point {point!r} (group {group}, chunk {chunk}) has no readable checkpoint in "
        f"{directory}" + (" yet." if not steps else f" (steps {steps} all failed)."))


def _unstack(raw: dict, record: dict, index: int, step: int) -> dict:
    member = jax.tree.map(lambda a: np.array(np.asarray(a)[index]), raw)
    out = _ordered(dict(member))
    for k, kind in (("step", int), ("diverged_step", int), ("diverged", bool),
                    ("has_prev", bool), ("born_dead", bool)):
        if k in out:
            out[k] = _scalar(out[k], kind)
    if isinstance(out.get("hparams"), dict):
        out["hparams"] = {k: _scalar(v, float) for k, v in out["hparams"].items()}
    if isinstance(out.get("prev_dead"), list):
        out["prev_dead"] = tuple(out["prev_dead"])
    out.update(point=record["points"][index], group=record.get("group"),
               chunk=record.get("chunk"), checkpoint_step=int(step),
               config=record.get("config", {}))
    return out
