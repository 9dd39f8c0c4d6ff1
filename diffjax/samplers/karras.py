"""EDM's samplers (Karras et al. 2022, arXiv:2206.00364): Heun's method and Euler on the PF-ODE
in EDM variables, with optional stochastic churn, on every continuous process.

Any Gaussian path is a rescaling of the EDM one: with `x^ = x / alpha` and the noise level
`sigma_e = sigma / alpha = e^{-lambda}`, the PF-ODE is `dx^/dsigma_e = (x^ - D(x^; sigma_e)) /
sigma_e` with `D(x^; sigma_e) = E[x_0 | x_t]` at the log-SNR-matched time (eq. 4 with `s = 1`,
`sigma(t) = t`; Sec. 3). Both samplers step this ODE on a grid of noise levels (Karras grid by
default, eq. 5) and end with the denoiser `D(x^; sigma_min)`, the Euler step to `sigma = 0`.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from diffjax._checks import check_knob, check_positive_int, check_times
from diffjax._typing import Batch, Key, Scalar, Shape, Values
from diffjax.model import Model
from diffjax.processes import AbstractProcess
from diffjax.samplers import _driver as drv

__all__ = ["SIGMA_MAX", "euler", "heun"]

SIGMA_MAX = drv.SIGMA_MAX  # Karras et al.'s largest noise level: the default start of these samplers


def heun(
    key: Key,
    model: Model,
    shape: Shape,
    *,
    num_steps: int = 18,
    grid: str = "karras",
    rho: Scalar = 7.0,
    churn: Scalar = 0.0,
    s_tmin: Scalar = 0.0,
    s_tmax: Scalar | None = None,
    s_noise: Scalar = 1.0,
    t_eps: Scalar | None = None,
    t_max: Scalar | None = None,
    process: AbstractProcess | None = None,
    save_times: Values | None = None,
) -> tuple[Batch, drv.SamplerInfo]:
    r"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2), on any continuous process.

    `N = num_steps` noise levels `sigma_0 > ... > sigma_{N-1}` (from `t_max` to `t_eps`; the
    grid as in `dpm_solver`, Karras with `rho = 7` by default) and `sigma_N = 0`. At level `i`,
    with `gamma_i = min(churn / N, sqrt(2) - 1)` when `s_tmin <= sigma_i <= s_tmax` (else 0),
    noise is added up to `sigma^ = (1 + gamma_i) sigma_i`:
    `x^ <- x^ + sqrt(sigma^^2 - sigma_i^2) s_noise z`; then one Heun step of the ODE to
    `sigma_{i+1}` (Euler, then the trapezoidal correction); the step to `sigma_N = 0` is the
    Euler step `x_0 = D(x^; sigma_{N-1})`. `churn = 0` is the deterministic Heun sampler
    (Algorithm 1), second order in the step. `info.nfe = 2 N - 1`. `churn`, `s_tmin`, `s_tmax`,
    `s_noise` are EDM noise levels `sigma / alpha` and may be traced.

    Args:
        key: a PRNG key (the prior draw and the churn noise).
        model: a `Model` on a continuous process, of any prediction kind.
        shape: `[B, *event]`. num_steps: `N >= 2`.
        s_tmax: upper end of the churn range (`None`: no limit).
        t_max: default: the process' `t_max` or, if earlier, the time of EDM noise level
            `SIGMA_MAX = 80` (e.g. 0.988 on `RectifiedFlow`, where `t_max = 1 - 1e-4` is level
            `1e4`: the Karras grid would spend its steps where nothing happens).
        t_eps, process, save_times: as in `dpm_solver`.

    Returns:
        `(x0 [B, *event], info)`.
    """
    return _karras_sampler(
        key, model, shape, num_steps, grid, rho, churn, s_tmin, s_tmax, s_noise, t_eps, t_max,
        process, save_times, second_order=True,
    )  # fmt: skip


def euler(
    key: Key,
    model: Model,
    shape: Shape,
    *,
    num_steps: int = 50,
    grid: str = "karras",
    rho: Scalar = 7.0,
    churn: Scalar = 0.0,
    s_tmin: Scalar = 0.0,
    s_tmax: Scalar | None = None,
    s_noise: Scalar = 1.0,
    t_eps: Scalar | None = None,
    t_max: Scalar | None = None,
    process: AbstractProcess | None = None,
    save_times: Values | None = None,
) -> tuple[Batch, drv.SamplerInfo]:
    """`heun` without the correction: Euler steps `x^ <- x^ + (sigma_{i+1} - sigma^) d_i` of the
    EDM ODE (with churn when asked); deterministic Euler here is DDIM (Karras et al. 2022,
    Sec. 4). `info.nfe = N`. Arguments as in `heun`."""
    return _karras_sampler(
        key, model, shape, num_steps, grid, rho, churn, s_tmin, s_tmax, s_noise, t_eps, t_max,
        process, save_times, second_order=False,
    )  # fmt: skip


def _karras_sampler(
    key, model, shape, num_steps, grid, rho, churn, s_tmin, s_tmax, s_noise, t_eps, t_max,
    process, save_times, *, second_order,
):  # fmt: skip
    key, shape = drv.check_common(key, shape)
    num_steps = check_positive_int(num_steps, "num_steps")
    if num_steps < 2:
        raise ValueError(f"`num_steps` must be at least 2 noise levels, got {num_steps}.")
    rho = drv.check_grid(grid, rho)
    churn = check_knob(churn, "churn", 0.0)
    s_tmin = check_knob(s_tmin, "s_tmin", 0.0)
    s_tmax = None if s_tmax is None else check_knob(s_tmax, "s_tmax", 0.0)
    s_noise = check_knob(s_noise, "s_noise", 0.0)
    model = drv.check_model(model, shape, continuous=True, process=process)
    t_max = drv.default_t_max(model.process, t_max, every_process=True)
    t_eps, t_max = check_times(model.process, t_eps, t_max)
    save_times = drv.check_save_times(save_times, t_eps, t_max)
    stochastic = not drv.is_zero(churn)
    ts = drv.time_grid(model.process, num_steps - 1, grid, t_eps, t_max, rho)
    x, saved = _karras(
        key, model, shape, ts, churn, s_tmin, s_tmax, s_noise, stochastic, second_order,
        save_times,
    )  # fmt: skip
    nfe = (2 if second_order else 1) * (num_steps - 1) + 1
    return drv.result(x, nfe, num_steps - 1, saved)


@eqx.filter_jit
def _karras(key, model, shape, ts, churn, s_tmin, s_tmax, s_noise, stochastic, second_order, save):
    """The samplers regrouped by noise level: after the first Euler step (from `sigma_0`),
    step `i = 1..N-1` holds the evaluations at `sigma_i`, Heun's correction of the step that
    reached it and then the Euler step from it (the denoiser `D(x^; sigma_{N-1})` at the last
    level). Without churn both are at `t_i`, in one inner loop whose time is loop-invariant,
    so XLA computes the network's time branch once per level. Every loop has a fixed length."""
    process = model.process
    a, s = process.marginal(ts)
    sig = s / a  # EDM noise levels [N]
    last = ts.shape[0] - 1
    prior_key, noise_key = jax.random.split(key)
    x = process.prior_sample(prior_key, shape)
    batch = shape[:1]
    gamma_max = jnp.minimum(churn / ts.shape[0], math.sqrt(2.0) - 1.0)

    def evaluate(i, noise, j, inner):  # at level i; j = 0: Heun's correction, j = 1: Euler
        xh, _, xh_hat, sig_hat, d_hat = inner  # xh: x^ = x / alpha; the previous Euler step
        sig_i, t_i, sig_next = sig[i], ts[i], sig[jnp.minimum(i + 1, last)]
        sig_j, t_j, xh_j = sig_i, t_i, xh
        if stochastic:  # churn before the Euler step: to sigma^ = (1 + gamma) sigma_i
            in_range = sig_i >= s_tmin if s_tmax is None else (sig_i >= s_tmin) & (sig_i <= s_tmax)
            gamma = jnp.where(in_range & (i < last) & (j == 1), gamma_max, 0.0)
            sig_j = sig_i * (1.0 + gamma)
            t_j = jnp.where(gamma > 0, process.t_from_log_snr(-jnp.log(sig_j)), t_i)
            xh_j = xh + sig_i * jnp.sqrt(gamma * (2.0 + gamma)) * s_noise * noise
        x0 = model.x0(process.alpha(t_j) * xh_j, jnp.full(batch, t_j))
        d = (xh_j - x0) / sig_j  # d x^ / d sigma
        out = jnp.where(i < last, xh_j + (sig_next - sig_j) * d, x0)
        if second_order:
            out = jnp.where(j == 0, xh_hat + (sig_i - sig_hat) * 0.5 * (d_hat + d), out)
        return out, xh, xh_j, sig_j, d

    def noise(i):  # the churn noise of level i
        return jax.random.normal(jax.random.fold_in(noise_key, i), shape, x.dtype) if stochastic else None

    def step(carry, i):  # carry: (x at level i - 1, the Euler prediction at level i, ...)
        _, xh, *prev = carry
        inner = (xh, xh, *prev)
        if second_order:
            out, xh_i, *prev = jax.lax.fori_loop(0, 2, lambda j, c: evaluate(i, noise(i), j, c), inner)
        else:
            out, xh_i, *prev = evaluate(i, noise(i), 1, inner)
        return (a[i] * xh_i, out, *prev)

    xh = x / a[0]
    first, _, *prev = evaluate(0, noise(0), 1, (xh, xh, xh, sig[0], jnp.zeros_like(x)))
    (_, x, *_), saved = drv.scan_saving(step, (x, first, *prev), jnp.arange(1, last + 1), ts, save)
    return x, saved
