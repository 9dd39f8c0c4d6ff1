"""Samplers: DDPM, DDIM, DPM-Solver++, EDM's Heun and Euler, reverse SDE, predictor-corrector, probability-flow ODE.

Every sampler takes a `diffjax.Model` (any prediction kind; the continuous ones on any
continuous process), draws a whole batch `[B, *event]` as one state in one compiled program
(`lax.scan` for the discrete maps, `diffrax.diffeqsolve` for the SDE and the PF-ODE), and
returns `(samples, info)` with `info` a `SamplerInfo` (`nfe` an int32 array; `trajectory`,
`times` with `save_times`). The same key gives the same samples, and `vmap` over keys gives
what separate calls give. The last step is denoised: the output is `E[x_0 | x_t]` at the last
time (Tweedie); when that noise level is not small against the data's scale, this mean is
visibly narrower than the data (e.g. the notes' constant DDPM schedule with `beta = 0.01`).

Grids (continuous): `"logsnr"` (uniform in `lambda`, default), `"time"`, `"karras"` (with
`rho`); (discrete DDIM): `"uniform"`, `"quadratic"`, `"trailing"`.
"""

from diffjax.samplers._driver import SamplerInfo
from diffjax.samplers.discrete import ddim, ddpm
from diffjax.samplers.karras import euler, heun
from diffjax.samplers.multistep import dpm_solver, unipc
from diffjax.samplers.ode import decode, encode, ode, probability_flow, reflow_coupling
from diffjax.samplers.sde import predictor_corrector, reverse_sde

__all__ = [
    "SamplerInfo",
    "ddim",
    "ddpm",
    "decode",
    "dpm_solver",
    "encode",
    "euler",
    "heun",
    "ode",
    "predictor_corrector",
    "probability_flow",
    "reflow_coupling",
    "reverse_sde",
    "unipc",
]
