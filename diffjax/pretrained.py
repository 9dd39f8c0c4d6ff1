"""Save a trained model to a self-describing directory, and load it back in one call.

    dj.save_pretrained("runs/8g/model", model, network)    # a dj.Model and its diffjax.nets module
    model = dj.load("runs/8g/model")                       # a dj.Model, ready to sample from
    x, info = dj.samplers.dpm_solver(key, model, (4096, 2))

As diffusers' `save_pretrained` / `from_pretrained`, without a hub. The directory holds

- `model.json`: the format and its version, the diffjax version, the network's class (of
  `diffjax.nets`) and constructor arguments (`network.config`, see `nets.records_config`), the
  process' class and parameters, the prediction kind, the time map, EDM's `sigma_data` for a
  preconditioned model (`edm_model`), and `num_classes` for a label-conditional network (whose
  null label, for `classifier_free`, is `num_classes`), and the model's `compute_dtype` (mixed
  precision, `model.mixed_precision`; absent or null: the network's own dtype);
- `params/`: the parameters and the network's other variables (e.g. fixed Fourier
  frequencies), an Orbax checkpoint with the sha256 of its arrays (`training.Checkpointer`),
  verified by `load`.

The loaded model's outputs equal the saved model's bit for bit. The directory is written
under a temporary name next to `path` and renamed into place: `path` holds the previous
complete model, the new one, or (for an instant, when replacing one) nothing; never a part.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import diffjax
from diffjax import nets, training
from diffjax._checks import check_dtype
from diffjax.model import EDMDenoiser, Model, edm_model
from diffjax.processes import EDM, VESDE, VPSDE, Cosine, RectifiedFlow, SubVPSDE
from diffjax.schedules import DiscreteSchedule

__all__ = ["MODEL_FILE", "PARAMS_DIR", "TimeScale", "load", "read_config", "save_pretrained"]

MODEL_FILE = "model.json"
"""The description of the model inside a saved directory."""
PARAMS_DIR = "params"
"""The Orbax checkpoint of the parameters inside a saved directory."""
FORMAT = "diffjax.pretrained"
FORMAT_VERSION = 1
_KEYS = ("network", "process", "prediction", "time_map", "edm", "num_classes")
_PROCESSES = {
    cls.__name__: cls
    for cls in (VPSDE, SubVPSDE, VESDE, EDM, RectifiedFlow, Cosine, DiscreteSchedule)
}


class TimeScale(eqx.Module):
    """`t -> factor * t`: a `Model` time map from the model's time to the network's (e.g. a
    network trained on DDPM steps, called at `i = t N / T`); the time map `model.json` records."""

    factor: float = eqx.field(static=True)

    def __call__(self, t):
        return self.factor * t


# ----------------------------------------------------------------------------- model.json


def _encode(value) -> Any:
    """A number or an array as JSON: a number, or `{"dtype", "data"}` for an array table.

    Floats are written in the shortest decimal that reads back to the same value of their
    dtype (`0.7`, not float32's `0.699999988079071`), so the round trip is exact.
    """
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
        flat = [float(str(v)) for v in arr.ravel()]  # str of a NumPy float: its shortest form
        data = np.array(flat, dtype=object).reshape(arr.shape).tolist()
    else:
        data = arr.tolist()
    return data if arr.ndim == 0 else {"dtype": arr.dtype.name, "data": data}


def _decode(value) -> Any:
    if isinstance(value, dict):
        return jnp.asarray(np.asarray(value["data"], value["dtype"]))
    return value


def _process_spec(process) -> dict:
    return {
        "class": type(process).__name__,
        "fields": {f.name: _encode(getattr(process, f.name)) for f in dataclasses.fields(process)},
    }


def _process_from_spec(spec: dict):
    """The process of `_process_spec`; a schedule gets its stored tables exactly (recomputing
    them from the stored float32 betas would not reproduce them bit for bit)."""
    name = spec["class"]
    if name not in _PROCESSES:
        raise ValueError(f"unknown process class {name!r} (known: {', '.join(_PROCESSES)})")
    fields = {k: _decode(v) for k, v in spec["fields"].items()}
    if name != "DiscreteSchedule":
        return _PROCESSES[name](**fields)
    schedule = DiscreteSchedule(fields["betas"])
    names = [f.name for f in dataclasses.fields(schedule)]
    return eqx.tree_at(
        lambda s: [getattr(s, n) for n in names], schedule, [fields[n] for n in names]
    )


def _network_class(name: str):
    cls = getattr(nets, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nnx.Module) and hasattr(cls, "config")):
        raise ValueError(
            f"unknown network class {name!r}: expected a diffjax.nets module that records its "
            "constructor arguments (MLP, UNet)"
        )
    return cls


def _tuples(value):
    """JSON lists back to the tuples the network recorded."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _describe(model: Model, network: nnx.Module) -> dict:
    """The `model.json` of `(model, network)`; `TypeError`/`ValueError` naming the argument for
    what cannot be recorded exactly."""
    if not isinstance(model, Model):
        raise TypeError(f"`model` must be a diffjax Model, got {type(model).__name__}.")
    if not isinstance(network, nnx.Module):
        raise TypeError(f"`network` must be a diffjax.nets module, got {type(network).__name__}.")
    cls = type(network)
    if getattr(nets, cls.__name__, None) is not cls or not hasattr(cls, "config"):
        raise TypeError(
            f"`network` must be a diffjax.nets module that records its constructor arguments "
            f"(MLP, UNet), got {cls.__module__}.{cls.__name__}."
        )
    if model.params is None:
        raise ValueError(
            "`model` must carry its parameters (`Model(apply, process, prediction, params=...)` "
            "with `apply, params = nets.split(network)`); guided or rescaled models are "
            "combinators of a model: save the model itself."
        )
    expected = nnx.state(network, nnx.Param)
    same = jax.tree.structure(model.params) == jax.tree.structure(expected) and all(
        jnp.shape(a) == jnp.shape(b) and jnp.result_type(a) == jnp.result_type(b)
        for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(expected), strict=True)
    )
    if not same:
        raise ValueError(
            f"`model.params` do not have the structure, shapes and dtypes of the parameters of "
            f"`network` ({cls.__name__}); pass the network that `model`'s apply was split from."
        )
    edm = None
    if isinstance(model.fn, EDMDenoiser):
        if not model.fn.with_params or not eqx.tree_equal(model.fn.process, model.process):
            raise ValueError(
                "`model` is an EDM denoiser on another process than the model's, or without "
                "params; save `dj.edm_model(apply, process, sigma_data=..., params=...)`."
            )
        edm = {"sigma_data": _encode(model.fn.sigma_data)}
    if model.time_map is None:
        time_map = None
    elif isinstance(model.time_map, TimeScale):
        time_map = {"scale": model.time_map.factor}
    else:
        raise ValueError(
            "`model.time_map` must be None or a `diffjax.pretrained.TimeScale` to be saved, got "
            f"{type(model.time_map).__name__}."
        )
    process = _process_spec(model.process)
    if type(model.process).__name__ not in _PROCESSES or not bool(
        eqx.tree_equal(_process_from_spec(process), model.process)
    ):
        raise ValueError(
            f"`model.process` ({type(model.process).__name__}) cannot be recorded exactly: "
            f"expected one of {', '.join(_PROCESSES)} with concrete parameters."
        )
    config = network.config
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "diffjax_version": diffjax.__version__,
        "network": {"class": cls.__name__, "config": config},
        "process": process,
        "prediction": model.prediction,
        "time_map": time_map,
        "edm": edm,
        "num_classes": config.get("num_classes"),
        "compute_dtype": None if model.compute_dtype is None else model.compute_dtype.name,
    }


def _state(params, constants) -> training.TrainState:
    """The tree that `params/` stores: parameters and the network's other variables."""
    tree = {"params": params, "constants": constants}
    return training.TrainState(jnp.zeros((), jnp.int32), tree, None, None)


# ----------------------------------------------------------------------------- save, load


def save_pretrained(path, model: Model, network: nnx.Module) -> str:
    """Write `model` (its network, parameters, process, prediction, ...) to the directory `path`.

    Args:
        path: the directory to write; an existing saved model there is replaced, any other
            existing non-empty directory is refused.
        model: a `Model` whose `fn` is `network`'s `nets.split` apply (or `edm_model` of it)
            and whose `params` have the structure of `network`'s (e.g. its EMA parameters);
            the time map `None` or a `TimeScale`.
        network: the `diffjax.nets` module (`MLP`, `UNet`) the apply was split from; its
            constructor arguments and non-trainable variables are saved, its parameters not.

    Returns:
        The absolute path written.

    Raises:
        TypeError / ValueError: naming the argument that cannot be recorded, before anything
            is written.
    """
    spec = _describe(model, network)
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isfile(os.path.join(path, MODEL_FILE)):
        if not os.path.isdir(path) or os.listdir(path):
            raise ValueError(
                f"`path` {path} exists and is not a saved diffjax model; refusing to replace it."
            )
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        constants = nnx.split(network, nnx.Param, ...)[2]
        with training.Checkpointer(os.path.join(tmp, PARAMS_DIR)) as ckpt:
            ckpt.save(_state(model.params, constants), 0, force=True)
            ckpt.wait()
        with open(os.path.join(tmp, MODEL_FILE), "w") as f:
            json.dump(spec, f, indent=2, sort_keys=True)
            f.write("\n")
        if os.path.exists(path):
            old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_config(path) -> dict:
    """The checked contents of `<path>/model.json` (e.g. `["num_classes"]` for guidance).

    Raises:
        ValueError: naming `path` when it is not a directory, has no `model.json`, or the file
            is not valid JSON of a known format and version.
    """
    path = os.fspath(path)
    file = os.path.join(path, MODEL_FILE)
    if not os.path.isdir(path):
        raise ValueError(f"{path} is not a saved diffjax model: no such directory.")
    if not os.path.isfile(file):
        raise ValueError(f"{path} is not a saved diffjax model: it has no {MODEL_FILE}.")
    try:
        with open(file) as f:
            spec = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is not readable JSON ({err}).") from err
    kind = spec.get("format") if isinstance(spec, dict) else None
    if kind != FORMAT:
        raise ValueError(f"{file} is not a diffjax model file (format {kind!r}, not {FORMAT!r}).")
    version = spec.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{file} has format version {version!r}; diffjax {diffjax.__version__} reads "
            f"version {FORMAT_VERSION}."
        )
    missing = [k for k in _KEYS if k not in spec]
    if missing:
        raise ValueError(f"{file} lacks the entries {', '.join(missing)}.")
    return spec


def load(path) -> Model:
    """The `Model` saved by `save_pretrained` in `path`, parameters verified by their sha256.

    Raises:
        ValueError: naming `path` and what is wrong: a missing directory or `model.json`, an
            unknown format, version, network or process, missing or corrupt parameters.
    """
    spec = read_config(path)
    file = os.path.join(os.fspath(path), MODEL_FILE)
    try:
        cls = _network_class(spec["network"]["class"])
        config = {k: _tuples(v) for k, v in spec["network"]["config"].items()}
        abstract = nnx.eval_shape(lambda: cls(**config, rngs=nnx.Rngs(0)))
        process = _process_from_spec(spec["process"])
        time_map = None if spec["time_map"] is None else TimeScale(spec["time_map"]["scale"])
        sigma_data = None if spec["edm"] is None else spec["edm"]["sigma_data"]
        compute_dtype = check_dtype(spec.get("compute_dtype"), "compute_dtype")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{file} does not describe a model diffjax can build: {err}") from err
    graphdef, params, constants = nnx.split(abstract, nnx.Param, ...)
    try:
        with training.Checkpointer(os.path.join(path, PARAMS_DIR), create=False) as ckpt:
            tree = ckpt.restore(_state(params, constants)).params
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"the parameters of the model in {path} cannot be loaded: {err}") from err
    apply, params = nets.split(nnx.merge(graphdef, tree["params"], tree["constants"]))
    fn = apply
    if sigma_data is not None:
        fn = edm_model(apply, process, sigma_data=sigma_data, params=params).fn
    return Model(
        fn,
        process,
        spec["prediction"],
        params=params,
        time_map=time_map,
        compute_dtype=compute_dtype,
    )
