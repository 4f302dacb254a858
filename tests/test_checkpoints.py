"""Tests of deadjax.checkpoints: round trips, keep-last-k, async saves, damaged
checkpoints and load_member, on a small real population."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deadjax import checkpoints, config as config_lib, data, population
from deadjax.checkpoints import ChunkCheckpointer, CheckpointWarning, load_member
from deadjax.results import load_results as deadjax_load_results
from tests.conftest import compiled_for, device_data

GROUP = "g0123456789"
POINTS = ["pa", "pb", "pc"]


# A failed Orbax restore may leave a TensorStore callback that fires on a
# closed asyncio loop ("Event loop is closed", printed as an unraisable
# exception): Orbax-internal noise, harmless.
_ORBAX_LOOP_NOISE = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")


def _config():
    cfg = config_lib.default_config()
    cfg.data.name = "random"
    cfg.data.num_train = 64
    cfg.data.num_test = 32
    cfg.data.num_features = 8
    cfg.data.batch_size = 16
    cfg.model.widths = (4, 3)
    cfg.model.norm = "batch"
    cfg.diagnostics.enabled = False
    cfg.diagnostics.probe_size = 16
    cfg.train.steps = 4
    cfg.train.eval_every = 2
    cfg.train.checkpoint_every = 2
    return cfg


@pytest.fixture(scope="module")
def setup():
    cfg = _config()
    pop = compiled_for(cfg)
    dev = device_data(cfg)
    seeds = np.arange(3, dtype=np.int32)
    hparams = pop.program.hparams_of([cfg] * 3)
    state = pop.init(seeds, hparams)
    state, _, _ = pop.train_chunk(state, dev, 2)
    template = jax.eval_shape(pop.init, seeds, hparams)
    return cfg, pop, dev, state, template, (seeds, hparams)


def _meta(cfg):
    return {"points": POINTS, "config": cfg.to_dict()}


def _bitwise_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def _saved(tmp_path, setup, steps=(2,), max_to_keep=3):
    cfg, _, _, state, _, _ = setup
    with ChunkCheckpointer(tmp_path, GROUP, 0, max_to_keep=max_to_keep) as ck:
        for s in steps:
            assert ck.save(s, state, _meta(cfg))
    return checkpoints.checkpoint_dir(tmp_path, GROUP, 0)


def _largest_file(root: Path) -> Path:
    files = [p for p in root.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def test_checkpoint_dir_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = checkpoints.checkpoint_dir("run", "grp", 7)
    assert d.is_absolute() and d == tmp_path / "run" / "checkpoints" / "grp" / "chunk_0007"


def test_round_trip_is_bitwise(tmp_path, setup):
    cfg, _, _, state, template, _ = setup
    _saved(tmp_path, setup)
    with ChunkCheckpointer(tmp_path, GROUP, 0) as ck:
        step, restored, meta = ck.restore_latest(template)
        assert step == 2
        _bitwise_equal(restored, state)
        assert type(restored) is type(state)
        assert type(restored.opt_state) is type(state.opt_state)
        assert type(restored.opt_state.inner_state[0]) is type(state.opt_state.inner_state[0])
        assert isinstance(restored.params["Dense_0"]["kernel"], jax.Array)
        assert restored.batch_stats  # BatchNorm statistics are there
        # A concrete template works too, and NumPy leaves come back as NumPy.
        _, again, _ = ck.restore_latest(jax.device_get(state))
        assert isinstance(again.params["Dense_0"]["kernel"], np.ndarray)
        _bitwise_equal(again, state)
    assert meta["points"] == POINTS and meta["group"] == GROUP and meta["chunk"] == 0
    assert meta["step"] == 2 and meta["config"]["model"]["norm"] == "batch"
    assert int(np.asarray(restored.step)[0]) == 2


def test_checkpoint_without_a_later_field_restores(tmp_path, setup):
    """A checkpoint written before MemberState.interventions existed (its tree
    has no such key) restores into today's template, bit for bit, with the
    field at its empty default; nothing is skipped or moved aside."""
    cfg, _, _, state, template, _ = setup
    assert state.interventions == {}
    old = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
           if f.name != "interventions"}
    with ChunkCheckpointer(tmp_path, GROUP, 0) as ck:
        assert ck.save(2, old, _meta(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ChunkCheckpointer(tmp_path, GROUP, 0) as ck:
            step, restored, _ = ck.restore_latest(template)
    assert step == 2 and restored.interventions == {}
    _bitwise_equal(restored, state)


def test_checkpoint_without_a_later_hyperparameter_restores(tmp_path, setup):
    """A checkpoint written before a per-member hyperparameter existed (here:
    saved without ``hparams/dropout``) restores bit for bit, the missing
    hyperparameter taken from the template, which holds the configs' values;
    a reordered point list selects rows as usual."""
    cfg, _, _, state, template, _ = setup
    host = jax.device_get(state)
    old = host.replace(hparams={k: v for k, v in host.hparams.items() if k != "dropout"})
    with ChunkCheckpointer(tmp_path, GROUP, 0) as ck:
        assert ck.save(2, old, _meta(cfg))
    target = host.replace(hparams=dict(host.hparams, dropout=np.asarray([0.5, 0.25, 0.0],
                                                                       np.float32)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ChunkCheckpointer(tmp_path, GROUP, 0) as ck:
            step, restored, _ = ck.restore_latest(target)
            _, reordered, _ = ck.restore_latest(
                jax.tree.map(lambda a: a[[2, 0, 1]], target), points=[POINTS[2], *POINTS[:2]])
    assert step == 2
    np.testing.assert_array_equal(restored.hparams["dropout"], [0.5, 0.25, 0.0])
    _bitwise_equal(restored.replace(hparams=host.hparams), host)
    np.testing.assert_array_equal(reordered.params["Dense_0"]["kernel"],
                                  host.params["Dense_0"]["kernel"][[2, 0, 1]])
    np.testing.assert_array_equal(reordered.hparams["dropout"], [0.0, 0.5, 0.25])


def test_restore_with_nothing_saved_is_none(tmp_path, setup):
    with ChunkCheckpointer(tmp_path, GROUP, 3) as ck:
        assert ck.restore_latest(setup[4]) is None


def test_keeps_last_k(tmp_path, setup):
    d = _saved(tmp_path, setup, steps=(2, 4, 6, 8), max_to_keep=2)
    assert sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) == [6, 8]
    with ChunkCheckpointer(tmp_path, GROUP, 0) as ck:
        assert ck.all_steps() == [6, 8]
        assert not ck.save(8, setup[3], _meta(setup[0]))  # an existing step is skipped


def test_async_save_survives_donation(tmp_path, setup):
    cfg, pop, dev, state, template, (seeds, hparams) = setup
    expected = jax.device_get(pop.init(seeds, hparams))  # (device_get would pin `fresh`)
    fresh = pop.init(seeds, hparams)
    ck = ChunkCheckpointer(tmp_path, GROUP, 0)
    ck.save(0, fresh, _meta(cfg))
    # The next compiled call donates `fresh`'s buffers while the save may still run.
    pop.train_chunk(fresh, dev, 2)
    assert fresh.params["Dense_0"]["kernel"].is_deleted()
    ck.wait()
    step, restored, _ = ck.restore_latest(template)
    ck.close()
    assert step == 0
    _bitwise_equal(restored, expected)


@_ORBAX_LOOP_NOISE
def test_truncated_newest_falls_back_and_is_moved_aside(tmp_path, setup):
    cfg, _, _, state, template, _ = setup
    d = _saved(tmp_path, setup, steps=(2, 4))
    victim = _largest_file(d / "4" / "state")
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    with ChunkCheckpointer(tmp_path, GROUP, 0) as ck:
        with pytest.warns(CheckpointWarning, match=str(d / "4")):
            step, restored, _ = ck.restore_latest(template)
        assert step == 2
        _bitwise_equal(restored, state)
        assert ck.all_steps() == [2]
        assert ck.save(4, state, _meta(cfg))  # the resumed run can save step 4 again
    assert len(list((d.parent / "chunk_0000.corrupt").iterdir())) == 1


@_ORBAX_LOOP_NOISE
def test_damaged_bytes_fall_back(tmp_path, setup):
    _, _, _, state, template, _ = setup
    d = _saved(tmp_path, setup, steps=(2, 4))
    # Scramble the middle third of every OCDBT data file of step 4.
    for victim in (d / "4" / "state").rglob("d/*"):
        raw = bytearray(victim.read_bytes())
        for i in range(len(raw) // 3, 2 * len(raw) // 3):
            raw[i] ^= 0x5A
        victim.write_bytes(bytes(raw))
    with ChunkCheckpointer(tmp_path, GROUP, 0) as ck:
        with pytest.warns(CheckpointWarning, match=str(d / "4")):
            step, restored, _ = ck.restore_latest(template)
    assert step == 2
    _bitwise_equal(restored, state)


@_ORBAX_LOOP_NOISE
def test_silently_changed_array_is_caught_by_checksums(tmp_path, setup):
    # Orbax stores arrays zstd-compressed without checksums: rewrite one
    # kernel of step 4 through TensorStore (a validly encoded, wrong value,
    # as a bad disk or a stray writer would leave) and only the CRC-32 saved
    # in the metadata notices.
    import tensorstore as ts
    _, _, _, state, template, _ = setup
    d = _saved(tmp_path, setup, steps=(2, 4))
    arr = ts.open({"driver": "zarr", "kvstore": {
        "driver": "ocdbt", "base": f"file://{d / '4' / 'state'}/",
        "path": "params.Dense_0.kernel/"}}).result()
    value = arr.read().result()
    value[1, 2, 3] += 1.0
    arr.write(value).result()
    with ChunkCheckpointer(tmp_path, GROUP, 0) as ck:
        with pytest.warns(CheckpointWarning, match="checksum"):
            step, restored, _ = ck.restore_latest(template)
    assert step == 2
    _bitwise_equal(restored, state)


def test_leftover_orbax_temporary_dir_is_ignored(tmp_path, setup):
    _, _, _, state, template, _ = setup
    d = _saved(tmp_path, setup, steps=(2,))
    tmp = d / "4.orbax-checkpoint-tmp-1700000000000000"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "manifest.ocdbt").write_bytes(b"\x00partial")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        with ChunkCheckpointer(tmp_path, GROUP, 0) as ck:
            assert ck.all_steps() == [2]
            step, restored, _ = ck.restore_latest(template)
    assert step == 2
    assert not tmp.exists()  # a writer cleans up what a killed save left
    _bitwise_equal(restored, state)


def test_template_mismatch_is_an_error_not_corruption(tmp_path, setup):
    _, _, _, _, template, _ = setup
    _saved(tmp_path, setup, steps=(2,))
    two = jax.tree.map(lambda s: jax.ShapeDtypeStruct((2,) + s.shape[1:], s.dtype), template)
    with ChunkCheckpointer(tmp_path, GROUP, 0) as ck:
        with pytest.raises(ValueError, match="template"):
            ck.restore_latest(two)
        # Selecting rows by point id fits a smaller template.
        step, sel, _ = ck.restore_latest(two, points=["pc", "pa"])
        assert ck.all_steps() == [2]
    full = jax.device_get(setup[3])
    _bitwise_equal(sel, jax.tree.map(lambda a: jnp.asarray(a[np.array([2, 0])]), full))


def _write_points(workdir: Path, chunk_of=None):
    chunk_of = chunk_of or {}
    lines = [json.dumps({"point": p, "overrides": {"seed": i}, "group": GROUP,
                         "chunk": chunk_of.get(p, 0)}) for i, p in enumerate(POINTS + ["pd"])]
    (workdir / "points.jsonl").write_text("\n".join(lines) + "\n")


def test_load_member(tmp_path, setup):
    _, _, _, state, _, _ = setup
    _saved(tmp_path, setup, steps=(2,))
    _write_points(tmp_path, {"pd": 1})
    m = load_member(str(tmp_path), "pb")
    host = jax.device_get(state)
    dense = [k for k in m["params"] if k.startswith("Dense_")]
    assert dense == ["Dense_0", "Dense_1", "Dense_2"]
    assert m["params"]["Dense_0"]["kernel"].shape == (8, 4)   # (in, out)
    assert m["params"]["Dense_2"]["kernel"].shape == (3, 10)
    for path, leaf in checkpoints.leaf_paths(host.params):
        got = m["params"]
        for k in path.split("/"):
            got = got[k]
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, leaf[1])
    np.testing.assert_array_equal(m["batch_stats"]["BatchNorm_0"]["mean"],
                                  host.batch_stats["BatchNorm_0"]["mean"][1])
    np.testing.assert_array_equal(m["opt_state"]["inner_state"][0]["mu"]["Dense_1"]["kernel"],
                                  host.opt_state.inner_state[0].mu["Dense_1"]["kernel"][1])
    assert m["step"] == 2 and isinstance(m["step"], int)
    assert m["diverged"] is False and m["diverged_step"] == -1
    assert m["hparams"]["learning_rate"] == pytest.approx(1e-3)
    assert m["point"] == "pb" and m["checkpoint_step"] == 2
    with pytest.raises(KeyError, match="nope"):
        load_member(tmp_path, "nope")
    with pytest.raises(FileNotFoundError, match="no checkpoint yet"):
        load_member(tmp_path, "pd")
    with pytest.raises(FileNotFoundError, match="points.jsonl"):
        load_member(tmp_path / "elsewhere", "pa")


@_ORBAX_LOOP_NOISE
def test_load_member_skips_a_damaged_newest_step_read_only(tmp_path, setup):
    cfg, pop, dev, state, _, _ = setup
    with ChunkCheckpointer(tmp_path, GROUP, 0) as ck:
        ck.save(2, state, _meta(cfg))
        later, _, _ = pop.train_chunk(jax.tree.map(jnp.copy, state), dev, 4)
        ck.save(4, later, _meta(cfg))
    _write_points(tmp_path)
    d = checkpoints.checkpoint_dir(tmp_path, GROUP, 0)
    assert load_member(tmp_path, "pa")["step"] == 4
    victim = _largest_file(d / "4" / "state")
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    with pytest.warns(CheckpointWarning):
        m = load_member(tmp_path, "pa")
    assert m["step"] == 2
    assert (d / "4").exists()  # load_member never moves anything


def test_resumed_training_equals_uninterrupted(tmp_path, setup):
    cfg, pop, dev, state, template, _ = setup
    straight, _, _ = pop.train_chunk(jax.tree.map(jnp.copy, state), dev, 4)
    _saved(tmp_path, setup, steps=(2,))
    with ChunkCheckpointer(tmp_path, GROUP, 0) as ck:
        step, restored, _ = ck.restore_latest(template)
    resumed, _, _ = pop.train_chunk(restored, dev, 4)
    assert step == 2 and int(np.asarray(resumed.step)[0]) == 4
    _bitwise_equal(resumed, straight)


@pytest.mark.slow
def test_zero_steps_leaves_a_loadable_initial_member(tmp_path):
    """train.steps = 0 evaluates the initialisation and checkpoints it:
    load_member returns init from the seed, bit for bit."""
    from deadjax import runner, sweep
    from tests.conftest import init_members, tiny_config
    base = tiny_config(train__steps=0, diagnostics__families=("dead",))
    runner.run_sweep(base, sweep.product({"seed": [4, 5]}), tmp_path, tensorboard=False)
    frame = deadjax_load_results(tmp_path)
    assert frame.step.tolist() == [0, 0]
    point = frame[frame.seed == 5].point.iloc[0]
    member = load_member(tmp_path, point)
    assert member["step"] == 0
    cfg = tiny_config(train__steps=0, diagnostics__families=("dead",), seed=5)
    fresh = jax.device_get(init_members(compiled_for(cfg), [cfg]))
    for layer in ("Dense_0", "Dense_1", "Dense_2"):
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(member["params"][layer][leaf],
                                          fresh.params[layer][leaf][0])


@pytest.mark.slow
def test_checkpoint_without_the_diagnostic_carry_restores_with_the_initial_one(tmp_path):
    """A checkpoint written before MemberState.carry existed restores with the
    template's (initial) carry: the first evaluation after the resume then
    reads negative_persistent as NaN rather than comparing with zeros."""
    cfg = _config()
    cfg.diagnostics.enabled = True
    cfg.diagnostics.families = ("dead",)
    pop = compiled_for(cfg)
    seeds = np.arange(3, dtype=np.int32)
    hparams = pop.program.hparams_of([cfg] * 3)
    state, _, _ = pop.train_chunk(pop.init(seeds, hparams), device_data(cfg), 2)
    host = jax.device_get(state)
    assert host.carry["dead"]["valid"].all()  # evaluated at step 2
    old = {f.name: getattr(host, f.name) for f in dataclasses.fields(host) if f.name != "carry"}
    with ChunkCheckpointer(tmp_path, GROUP, 0) as ck:
        assert ck.save(2, old, _meta(cfg))
    fresh = jax.device_get(pop.init(seeds, hparams))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ChunkCheckpointer(tmp_path, GROUP, 0) as ck:
            step, restored, _ = ck.restore_latest(fresh)
    assert step == 2 and not restored.carry["dead"]["valid"].any()
    _bitwise_equal(restored.replace(carry=host.carry), host)
