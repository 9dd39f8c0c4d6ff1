"""diffjax: diffusion and flow models in JAX, every equation checked against an exact answer.

The core is one Gaussian path `x_t = alpha(t) x_0 + sigma(t) eps` (`processes`: VP, sub-VP, VE,
EDM, rectified flow, cosine; `schedules`: the discrete DDPM chain) and a `Model` that knows what
its network predicts. Topical modules follow the lecture notes. The modules built on other
libraries are imported on first use: `samplers`, `likelihood` and `fokker_planck` (diffrax),
`nets` (Flax), `training` (Optax, Orbax) and `pretrained` (`save_pretrained`, `load`), so
`import diffjax` loads none of diffrax, Flax, Optax or Orbax.
"""

import importlib

from diffjax import (
    cache,
    data,
    distributions,
    forward,
    guidance,
    langevin,
    losses,
    metrics,
    pipeline,
    processes,
    schedules,
)
from diffjax.cache import enable_compilation_cache
from diffjax.distributions import GaussianMixture, exact_model, gaussian
from diffjax.forward import q_posterior, q_sample
from diffjax.guidance import (
    autoguidance,
    classifier_free,
    classifier_guidance,
    inpainting_projection,
)
from diffjax.model import Model, edm_model, mixed_precision
from diffjax.processes import EDM, VESDE, VPSDE, AbstractProcess, Cosine, RectifiedFlow, SubVPSDE
from diffjax.schedules import DiscreteSchedule

__version__ = "0.1.0"

_LAZY = ("fokker_planck", "likelihood", "nets", "pretrained", "samplers", "training")
_LAZY_NAMES = {"load": "pretrained", "save_pretrained": "pretrained"}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f"diffjax.{name}")
        globals()[name] = module
        return module
    if name in _LAZY_NAMES:
        value = getattr(__getattr__(_LAZY_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffjax' has no attribute {name!r}")


__all__ = [
    "EDM",
    "VESDE",
    "VPSDE",
    "AbstractProcess",
    "Cosine",
    "DiscreteSchedule",
    "GaussianMixture",
    "Model",
    "RectifiedFlow",
    "SubVPSDE",
    "autoguidance",
    "cache",
    "classifier_free",
    "classifier_guidance",
    "data",
    "distributions",
    "edm_model",
    "enable_compilation_cache",
    "exact_model",
    "fokker_planck",
    "forward",
    "gaussian",
    "guidance",
    "inpainting_projection",
    "langevin",
    "likelihood",
    "load",
    "losses",
    "metrics",
    "mixed_precision",
    "nets",
    "pipeline",
    "pretrained",
    "processes",
    "q_posterior",
    "q_sample",
    "samplers",
    "save_pretrained",
    "schedules",
    "training",
]
