"""`dj.save_pretrained` / `dj.load`: bit-identical round trips, verified parameters, clear refusals."""

from __future__ import annotations

import glob
import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import diffjax as dj
from diffjax.pretrained import MODEL_FILE, TimeScale

SMALL = dict(hidden=(16, 16), embed_dim=8)
X = jax.random.normal(jax.random.key(0), (8, 2))
Y = jnp.arange(8, dtype=jnp.int32) % 3


def _trained(net):
    """`(apply, params)` of `net` with parameters moved off their initial values (as after
    training), so that a round trip that saved the network's own parameters would fail."""
    apply, params = dj.nets.split(net)
    return apply, jax.tree.map(lambda p: 1.1 * p + 0.01, params)


def _vp_eps():
    net = dj.nets.MLP(2, **SMALL, rngs=nnx.Rngs(1))
    apply, params = _trained(net)
    return dj.Model(apply, dj.VPSDE(), "eps", params=params), net


def _edm():  # Fourier features: fixed random frequencies, not parameters, must be saved too
    net = dj.nets.MLP(2, **SMALL, time_embedding="fourier", time_scale=1.0, rngs=nnx.Rngs(2))
    apply, params = _trained(net)
    return dj.edm_model(apply, dj.EDM(0.01, 10.0), sigma_data=0.7, params=params), net


def _rf_velocity():
    net = dj.nets.MLP(2, **SMALL, rngs=nnx.Rngs(3))
    apply, params = _trained(net)
    return dj.Model(apply, dj.RectifiedFlow(), "velocity", params=params), net


def _labels():
    net = dj.nets.MLP(2, **SMALL, num_classes=3, rngs=nnx.Rngs(4))
    apply, params = _trained(net)
    return dj.Model(apply, dj.VPSDE(0.2, 15.0), "eps", params=params), net


def _schedule():  # a discrete schedule (its tables stored exactly), a time map; not sampled
    net = dj.nets.MLP(2, **SMALL, time_scale=1.0, rngs=nnx.Rngs(5))
    apply, params = _trained(net)
    schedule = dj.schedules.cosine(50)
    return dj.Model(apply, schedule, "v", params=params, time_map=TimeScale(0.5)), net


def _bf16():  # mixed precision: float32 parameters, the network computed in bfloat16
    model, net = _vp_eps()
    return dj.mixed_precision(model, "bfloat16"), net


def _sample(model, labels):
    """DDIM (the cheapest sampler to compile), classifier-free guided for a conditional model."""
    if labels is not None:
        model = dj.classifier_free(model, labels, null_label=3, weight=2.0)
    return dj.samplers.ddim(jax.random.key(7), model, (8, 2), num_steps=2)[0]


CASES = {
    "vp_eps": (_vp_eps, jnp.linspace(0.05, 1.0, 8), None),
    "edm": (_edm, jnp.linspace(0.02, 10.0, 8), None),
    "rf_velocity": (_rf_velocity, jnp.linspace(0.05, 0.95, 8), None),
    "labels": (_labels, jnp.linspace(0.05, 1.0, 8), Y),
    "schedule": (_schedule, jnp.array([1, 5, 10, 20, 30, 40, 45, 50]), None),
    "bf16": (_bf16, jnp.linspace(0.05, 1.0, 8), None),
}


@pytest.mark.parametrize("case", CASES)
def test_round_trip_is_bit_identical(case, tmp_path):
    """The loaded model's outputs on a batch and its samples equal the original's bit for bit;
    `model.json` records what the model is."""
    make, t, labels = CASES[case]
    model, net = make()
    path = dj.save_pretrained(tmp_path / "m", model, net)
    loaded = dj.load(path)
    assert loaded.prediction == model.prediction and eqx.tree_equal(loaded.process, model.process)
    assert loaded.compute_dtype == model.compute_dtype
    args = () if labels is None else (labels,)
    out = eqx.filter_jit(lambda m: m(X, t, *args))
    np.testing.assert_array_equal(out(loaded), out(model))
    if case != "schedule":
        np.testing.assert_array_equal(_sample(loaded, labels), _sample(model, labels))
    spec = dj.pretrained.read_config(path)
    assert spec["network"] == {"class": "MLP", "config": json.loads(json.dumps(net.config))}
    assert spec["num_classes"] == (3 if case == "labels" else None)
    assert spec["edm"] == ({"sigma_data": 0.7} if case == "edm" else None)
    assert spec["time_map"] == ({"scale": 0.5} if case == "schedule" else None)
    assert spec["compute_dtype"] == ("bfloat16" if case == "bf16" else None)


def test_corrupt_missing_and_unknown_are_refused(tmp_path):
    """A flipped byte in any of the parameter data files is refused (a `ValueError` naming the
    path) or, where it lands in bytes the restore does not read (an index node, a top-level
    OCDBT data file the manifest no longer references), loads bit-identical parameters: never
    silently wrong ones (some must be refused). A missing `model.json` or directory, an unknown
    format version or network class: a `ValueError` naming the path and what is wrong."""
    model, net = _vp_eps()
    path = dj.save_pretrained(tmp_path / "m", model, net)
    spec = dj.pretrained.read_config(path)
    files = glob.glob(os.path.join(path, "params", "**", "d", "*"), recursive=True)
    refused = 0
    for name in files:  # in turn: flip the middle byte, load, put the file back
        clean = open(name, "rb").read()
        raw = bytearray(clean)
        raw[len(raw) // 2] ^= 1
        open(name, "wb").write(bytes(raw))
        try:
            loaded = dj.load(path)
        except ValueError as err:
            assert "corrupt" in str(err) and path in str(err), err
            refused += 1
        else:
            for u, v in zip(*map(jax.tree.leaves, (loaded.params, model.params)), strict=True):
                np.testing.assert_array_equal(u, v)
        open(name, "wb").write(clean)
    assert refused > 0, files

    def write(**changes):
        with open(os.path.join(path, MODEL_FILE), "w") as f:
            json.dump({**spec, **changes}, f)

    write(format_version=99)
    with pytest.raises(ValueError, match="format version 99"):
        dj.load(path)
    write(network={"class": "Classifier", "config": {}})
    with pytest.raises(ValueError, match="unknown network class 'Classifier'"):
        dj.load(path)
    write(process={"class": "Bogus", "fields": {}})
    with pytest.raises(ValueError, match="unknown process class 'Bogus'"):
        dj.load(path)
    os.remove(os.path.join(path, MODEL_FILE))
    with pytest.raises(ValueError, match=f"{path} is not a saved diffjax model: it has no model"):
        dj.load(path)
    with pytest.raises(ValueError, match="no such directory"):
        dj.load(tmp_path / "absent")


def test_save_refuses_what_it_cannot_record_and_replaces_atomically(tmp_path):
    """What cannot be recorded exactly is refused, naming the argument, before anything is
    written; saving over a saved model replaces it and leaves no temporary directory."""
    model, net = _vp_eps()
    target = tmp_path / "m"
    bad = [
        (eqx.tree_at(lambda m: m.time_map, model, lambda t: 2 * t, is_leaf=lambda v: v is None),
         net, "`model.time_map`"),
        (dj.Model(model.fn, model.process, "eps"), net, "`model` must carry its parameters"),
        (model, dj.nets.MLP(2, hidden=(8,), rngs=nnx.Rngs(0)), "`model.params`"),
        (model, dj.nets.Classifier(2, 3, hidden=(8,), rngs=nnx.Rngs(0)), "`network`"),
    ]  # fmt: skip
    for m, n, message in bad:
        with pytest.raises((TypeError, ValueError), match=message):
            dj.save_pretrained(target, m, n)
    assert os.listdir(tmp_path) == []
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="`path`.*is not a saved diffjax model"):
        dj.save_pretrained(tmp_path / "other", model, net)

    dj.save_pretrained(target, model, net)
    newer = eqx.tree_at(lambda m: m.params, model, jax.tree.map(lambda p: p + 1.0, model.params))
    dj.save_pretrained(target, newer, net)
    for u, v in zip(*map(jax.tree.leaves, (dj.load(target).params, newer.params)), strict=True):
        np.testing.assert_array_equal(u, v)
    assert sorted(os.listdir(tmp_path)) == ["m", "other"]
