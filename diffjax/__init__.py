"""diffjax: diffusion models in JAX, every equation checked against an exact answer.

Topical modules follow the lecture notes: `schedules` and `forward` (DDPM), `sde` (SDEs),
`distributions` (exact references), `metrics` (sample quality).
"""

from diffjax import (
    data,
    distributions,
    fokker_planck,
    forward,
    guidance,
    langevin,
    likelihood,
    losses,
    metrics,
    nets,
    samplers,
    schedules,
    sde,
    training,
)
from diffjax.distributions import GaussianMixture, exact_eps, exact_score, gaussian
from diffjax.forward import q_posterior, q_sample
from diffjax.guidance import classifier_free, classifier_guidance, inpainting_projection
from diffjax.schedules import DiscreteSchedule
from diffjax.sde import VESDE, VPSDE, SubVPSDE

__version__ = "0.1.0"

__all__ = [
    "VESDE",
    "VPSDE",
    "DiscreteSchedule",
    "GaussianMixture",
    "SubVPSDE",
    "classifier_free",
    "classifier_guidance",
    "data",
    "distributions",
    "exact_eps",
    "exact_score",
    "fokker_planck",
    "forward",
    "gaussian",
    "guidance",
    "inpainting_projection",
    "langevin",
    "likelihood",
    "losses",
    "metrics",
    "nets",
    "q_posterior",
    "q_sample",
    "samplers",
    "schedules",
    "sde",
    "training",
]
