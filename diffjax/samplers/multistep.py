"""Multistep exponential integrators in log-SNR form, on every continuous process.

Lu et al. 2022 (DPM-Solver++, arXiv:2211.01095) write the PF-ODE in `lambda = log(alpha/sigma)`,
where its linear part is solved exactly: for any Gaussian path,

    x_s = (sigma_s / sigma_t) x_t - alpha_s int_{lambda_t}^{lambda_s} e^{-lambda} x0(lambda) dlambda,

and the integral is approximated from past `x0` predictions. Only `alpha`, `sigma` and `lambda`
of the process enter, so one implementation serves VP, VE, EDM, flow matching and the rest.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_choice, check_positive_int, check_times
from diffjax._typing import Batch, Int, Key, Scalar, Shape, Values
from diffjax.model import Model
from diffjax.processes import AbstractProcess
from diffjax.samplers import _driver as drv

__all__ = ["dpm_solver"]


def dpm_solver(
    key: Key,
    model: Model,
    shape: Shape,
    *,
    num_steps: Int = 20,
    order: Int = 2,
    grid: str = "logsnr",
    rho: Scalar = 7.0,
    t_eps: Scalar | None = None,
    t_max: Scalar | None = None,
    lower_order_final: bool = True,
    process: AbstractProcess | None = None,
    save_times: Values | None = None,
) -> tuple[Batch, drv.SamplerInfo]:
    """DPM-Solver++ multistep in data-prediction form (Lu et al. 2022, arXiv:2211.01095, Alg. 2).

    With `h_i = lambda_i - lambda_{i-1}`, `x0_i = model.x0(x_i, t_i)` and `phi_1 = expm1(-h)`,
    the order-1 step is `x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i phi_1 x0_{i-1}` (DDIM);
    orders 2 and 3 add finite differences of the previous `x0` predictions (2M/3M). The first
    steps warm up at lower order; with `lower_order_final` the order at step `i` of `N` is
    `min(order, i, N - i + 1)`. The grid runs from `t_max` to `t_eps` (`"logsnr"` default,
    `"time"`, `"karras"` with `rho`); the output is the final denoising step `x0(x_N, t_eps)`.

    Args:
        key: a JAX PRNG key (it draws `x_T` only).
        model: a `Model` on a continuous process, of any prediction kind.
        shape: `[B, *event]`.
        num_steps: `N`; order: 1, 2 or 3.
        t_eps, t_max: end and start times (default: the process' `t_eps`, `t_max`); may be traced.
        process: optional process to sample on (the model is moved to it by log-SNR matching).
        save_times: optional times in `[t_eps, t_max]`; the state at the first grid time at or
            below each is saved.

    Returns:
        `(x0 [B, *event], info)`, `info.nfe = num_steps + 1`.
    """
    key, shape = drv.check_common(key, shape)
    num_steps = check_positive_int(num_steps, "num_steps")
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)):
        raise TypeError(f"`order` must be an int in (1, 2, 3), got {type(order).__name__}.")
    check_choice(int(order), "order", (1, 2, 3))
    rho = drv.check_grid(grid, rho)
    model = drv.check_model(model, shape, continuous=True, process=process)
    t_eps, t_max = check_times(model.process, t_eps, t_max)
    save_times = drv.check_save_times(save_times, t_eps, t_max)
    i = np.arange(1, num_steps + 1)
    orders = np.minimum(order, i)
    if lower_order_final:
        orders = np.minimum(orders, num_steps - i + 1)
    ts = drv.time_grid(model.process, num_steps, grid, t_eps, t_max, rho)
    x, saved = _dpm_solver(key, model, shape, ts, jnp.asarray(orders - 1), int(order), save_times)
    return drv.result(x, num_steps + 1, num_steps, saved)


@eqx.filter_jit
def _dpm_solver(key, model, shape, ts, order_index, order, save):
    process = model.process
    num_steps = ts.shape[0] - 1
    a, s = process.marginal(ts)
    lam = jnp.log(a) - jnp.log(s)
    x = process.prior_sample(key, shape)
    batch = shape[:1]

    def step(carry, inputs):
        x, m1, m2, h1, h2 = carry
        i, k = inputs  # from t_{i-1} to t_i
        m0 = model.x0(x, jnp.full(batch, ts[i - 1]))
        h = lam[i] - lam[i - 1]
        phi1 = jnp.expm1(-h)
        base = (s[i] / s[i - 1]) * x

        def first(_):
            return base - a[i] * phi1 * m0

        def second(_):
            d1 = (m0 - m1) / (h1 / h)
            return base - a[i] * phi1 * (m0 + 0.5 * d1)

        def third(_):
            r0, r1 = h1 / h, h2 / h
            d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            return base - a[i] * phi1 * m0 + a[i] * phi2 * d1 - a[i] * phi3 * d2

        x_new = jax.lax.switch(k, (first, second, third)[:order], None)
        return x_new, m0, m1, h, h1

    zeros = jnp.zeros_like(x)
    one = jnp.ones((), lam.dtype)
    carry = (x, zeros, zeros, one, one)
    xs = (jnp.arange(1, num_steps + 1), order_index)
    (x, *_), saved = drv.scan_saving(step, carry, xs, ts, save)
    return model.x0(x, jnp.full(batch, ts[-1])), saved
