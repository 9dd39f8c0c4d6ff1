"""Multistep exponential integrators in log-SNR form, on every continuous process.

Lu et al. 2022 (DPM-Solver++, arXiv:2211.01095) write the PF-ODE in `lambda = log(alpha/sigma)`,
where its linear part is solved exactly: for any Gaussian path,

    x_s = (sigma_s / sigma_t) x_t - alpha_s int_{lambda_t}^{lambda_s} e^{-lambda} x0(lambda) dlambda,

and the integral is approximated from past `x0` predictions. Only `alpha`, `sigma` and `lambda`
of the process enter, so one implementation serves VP, VE, EDM, flow matching and the rest.
`dpm_solver` (DPM-Solver++ 1M-3M, and SDE-DPM-Solver++ 1M/2M) and `unipc` (UniPC, Zhao et al.
2023) share the order schedule, the grid and the argument checks.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_bool, check_choice, check_int, check_positive_int, check_times
from diffjax._typing import Batch, Int, Key, Scalar, Shape, Values
from diffjax.model import Model
from diffjax.processes import AbstractProcess
from diffjax.samplers import _driver as drv

__all__ = ["dpm_solver", "unipc"]

# DPM-Solver's reference implementation (LuChengLu/DPM-Solver, `DPM_Solver.sample`) lowers the
# order of the final steps only when there are fewer than this many steps.
LOWER_ORDER_FINAL_BELOW = 10
VARIANTS = ("bh1", "bh2")


def dpm_solver(
    key: Key,
    model: Model,
    shape: Shape,
    *,
    num_steps: Int = 20,
    order: Int = 2,
    stochastic: bool = False,
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
    orders 2 and 3 add finite differences of the previous `x0` predictions (2M/3M). With
    `stochastic=True` the steps are those of SDE-DPM-Solver++ (ibid.; the reference code's and
    diffusers' `algorithm_type="sde-dpmsolver++"`, midpoint form), which solve the reverse SDE
    in `lambda` with its linear part and its noise exact:

        x_i = (sigma_i / sigma_{i-1}) e^{-h} x_{i-1} + alpha_i (1 - e^{-2h}) (x0_{i-1} + D/2)
              + sigma_i sqrt(1 - e^{-2h}) z_i,

    `D = 0` (1M, DDIM with `eta = 1`) or `D = (x0_{i-1} - x0_{i-2}) h_i / h_{i-1}` (2M).

    The first steps warm up at lower order (`min(order, i)` at step `i`). With
    `lower_order_final` and fewer than 10 steps the final steps lower it too, to
    `min(order, i, N - i + 1)`: the rule of the reference implementation (diffusers uses 15).
    The grid runs from `t_max` to `t_eps` (`"logsnr"` default, `"time"`, `"karras"` with `rho`);
    the output is the final denoising step `x0(x_N, t_eps)`.

    Args:
        key: a JAX PRNG key (it draws `x_T`, and with `stochastic` the noise of every step).
        model: a `Model` on a continuous process, of any prediction kind.
        shape: `[B, *event]`.
        num_steps: `N`; order: 1, 2 or 3 (1 or 2 with `stochastic`).
        stochastic: SDE-DPM-Solver++ instead of the ODE solver.
        t_eps, t_max: end and start times (default: the process' `t_eps`, and its `t_max` or,
            on rectified flow and the cosine path, the time of EDM noise level 80, 0.988);
            may be traced.
        lower_order_final: lower the final orders when `num_steps < 10`.
        process: optional process to sample on (the model is moved to it by log-SNR matching).
        save_times: optional times in `[t_eps, t_max]`; the state at the first grid time at or
            below each is saved.

    Returns:
        `(x0 [B, *event], info)`, `info.nfe = num_steps + 1`.
    """
    stochastic = check_bool(stochastic, "stochastic")
    key, shape, model, ts, orders, save_times = _setup(
        key, model, shape, num_steps, order, grid, rho, t_eps, t_max, lower_order_final,
        process, save_times,
    )  # fmt: skip
    if stochastic and order == 3:
        raise ValueError("`order` must be 1 or 2 with stochastic=True (SDE-DPM-Solver++ 1M/2M).")
    x, saved = _dpm_solver(
        key, model, shape, ts, jnp.asarray(orders - 1), int(order), bool(stochastic), save_times
    )
    return drv.result(x, orders.size + 1, orders.size, saved)


def unipc(
    key: Key,
    model: Model,
    shape: Shape,
    *,
    num_steps: Int = 10,
    order: Int = 2,
    variant: str = "bh2",
    grid: str = "logsnr",
    rho: Scalar = 7.0,
    t_eps: Scalar | None = None,
    t_max: Scalar | None = None,
    lower_order_final: bool = True,
    process: AbstractProcess | None = None,
    save_times: Values | None = None,
) -> tuple[Batch, drv.SamplerInfo]:
    """UniPC, multistep, with the data-prediction model (Zhao et al. 2023, arXiv:2302.04867).

    A predictor UniP-p and a corrector UniC-p per step, both with the `x0` model in `lambda`
    (Algorithms 2 and 3, B(h) form; the reference `multistep_uni_pc_bh_update`). From
    `t_{i-1}` to `t_i`, with `h = lambda_i - lambda_{i-1}`, the stored predictions
    `m_j = x0(x~_j, t_j)` (`x~_j` the predicted state) and the exact linear part

        base = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i expm1(-h) m_{i-1},

    the divided differences `D_k = (m_{i-1-k} - m_{i-1}) / r_k`, `r_k = (lambda_{i-1-k} -
    lambda_{i-1}) / h` (`1 <= k < p`), and `D_t = m_i - m_{i-1}` at the new point:

        predictor  x~_i = base - alpha_i B(h) sum_{k<p} a_k D_k,
        corrector  x_i  = base - alpha_i B(h) (sum_{k<p} c_k D_k + c_p D_t),

    where `m_i = x0(x~_i, t_i)` is the one evaluation of the step (reused by the next one), the
    weights solve the Vandermonde systems `sum_k a_k r_k^(j-1) = g_j` (`j < p`, nodes `r_k`)
    and `sum_k c_k r_k^(j-1) = g_j` (`j <= p`, nodes `r_1..r_{p-1}, 1`), with
    `g_j = j! phi_{j+1}(-h) (-h) / B(h)` (`phi_1(z) = (e^z - 1) / z`,
    `phi_{j+1}(z) = (phi_j(z) - 1/j!) / z`), and `B(h) = -h` (`"bh1"`) or `expm1(-h)`
    (`"bh2"`). As in the reference, `a = (1/2)` at order 2 and `c = (1/2)` at order 1 (the
    limits at `h -> 0`). UniC-p raises the order of UniP-p by one at no extra evaluation; it is
    not applied after the last step, whose `m_N = x0(x_N, t_eps)` is the output.

    Orders warm up and (with `lower_order_final`, fewer than 10 steps) lower at the end as in
    `dpm_solver` (the UniPC reference lowers at any step count).

    Args:
        key: a JAX PRNG key (it draws `x_T` only: the same `x_T` as `dpm_solver`).
        model: a `Model` on a continuous process, of any prediction kind.
        shape: `[B, *event]`.
        num_steps: `N`; order: 1, 2 or 3 (`p`, the predictor's order).
        variant: `"bh1"` or `"bh2"` (the paper's B1(h), B2(h)).
        grid, rho, t_eps, t_max, lower_order_final, process, save_times: as in `dpm_solver`
            (the saved states are the corrected ones).

    Returns:
        `(x0 [B, *event], info)`, `info.nfe = num_steps + 1`.
    """
    check_choice(variant, "variant", VARIANTS)
    key, shape, model, ts, orders, save_times = _setup(
        key, model, shape, num_steps, order, grid, rho, t_eps, t_max, lower_order_final,
        process, save_times,
    )  # fmt: skip
    x, saved = _unipc(
        key, model, shape, ts, jnp.asarray(orders - 1), int(order), variant, save_times
    )
    return drv.result(x, orders.size + 1, orders.size, saved)


# ---------------------------------------------------------------- shared
def _setup(key, model, shape, num_steps, order, grid, rho, t_eps, t_max, lower_order_final,
           process, save_times):  # fmt: skip
    """The checks of both samplers; returns the time grid and the order of every step."""
    key, shape = drv.check_common(key, shape)
    num_steps = check_positive_int(num_steps, "num_steps")
    check_choice(check_int(order, "order"), "order", (1, 2, 3))
    rho = drv.check_grid(grid, rho)
    model = drv.check_model(model, shape, continuous=True, process=process)
    t_max = drv.default_t_max(model.process, t_max)
    t_eps, t_max = check_times(model.process, t_eps, t_max)
    save_times = drv.check_save_times(save_times, t_eps, t_max)
    ts = drv.time_grid(model.process, num_steps, grid, t_eps, t_max, rho)
    orders = _orders(num_steps, int(order), check_bool(lower_order_final, "lower_order_final"))
    return key, shape, model, ts, orders, save_times


def _orders(num_steps: int, order: int, lower_order_final: bool) -> np.ndarray:
    """The order of steps `i = 1..N`: `min(order, i)`, and `min(., N - i + 1)` when lowered."""
    i = np.arange(1, num_steps + 1)
    orders = np.minimum(order, i)
    if lower_order_final and num_steps < LOWER_ORDER_FINAL_BELOW:
        orders = np.minimum(orders, num_steps - i + 1)
    return orders


def _log_snr_grid(process, ts):
    """The grid extended by the denoising step (`drv.append_denoising`), with its `alpha`,
    `sigma` and `lambda = log(alpha / sigma)` (`+inf` at the end)."""
    ts, a, s = drv.append_denoising(ts, *process.marginal(ts))
    return ts, a, s, jnp.log(a) - jnp.log(s)


def _vandermonde_solve(nodes, rhs):
    """`w` with `sum_k w_k nodes_k^j = rhs_j` for `j < n = len(nodes)` (a few traced scalars).

    By Lagrange: `w_k = L(l_k)` for the basis polynomial `l_k(r) = prod_{q != k} (r - n_q) /
    (n_k - n_q)` and the functional `L(r^j) = rhs_j`.
    """
    weights = []
    for k, node in enumerate(nodes):
        coeffs, den = [1.0], 1.0  # of prod_{q != k} (r - n_q), constant term first
        for q, other in enumerate(nodes):
            if q != k:
                coeffs = [
                    (coeffs[j - 1] if j > 0 else 0.0)
                    - other * (coeffs[j] if j < len(coeffs) else 0.0)
                    for j in range(len(coeffs) + 1)
                ]
                den = den * (node - other)
        weights.append(sum(c * g for c, g in zip(coeffs, rhs, strict=True)) / den)
    return weights


# ---------------------------------------------------------------- DPM-Solver++
def _dpm_weights(h, h1, h2, k, order: int, stochastic: bool):
    """`(w0, w1, w2)` of the order-`k + 1` step `x_i = base + a_i (w0 m0 + w1 (m0 - m1) +
    w2 (m1 - m2))` in the last three data predictions `m0, m1, m2` (Lu et al. 2022,
    arXiv:2211.01095: DPM-Solver++(1M, 2M, 3M); SDE-DPM-Solver++(1M, 2M)), with `h = h_i`,
    `r0 = h_{i-1} / h`, `r1 = h_{i-2} / h`.

    Weights of every order, indexed by the traced `k`: the step has no branch (on a GPU each
    `lax.switch` reads its index back to the host). The ratios of the orders not taken are
    replaced by 1, so every weight stays finite (the denoising step has `h = inf`).
    """
    r0 = jnp.where(k > 0, h1 / h, 1.0)
    if stochastic:
        decay = -jnp.expm1(-2.0 * h)  # 1 - e^{-2h}
        rows = [(decay, 0.0, 0.0), (decay, 0.5 * decay / r0, 0.0)]
    else:
        phi1 = jnp.expm1(-h)
        rows = [(-phi1, 0.0, 0.0), (-phi1, -0.5 * phi1 / r0, 0.0)]
        if order == 3:
            r1, h_safe = jnp.where(k > 1, h2 / h, 1.0), jnp.where(k > 0, h, 1.0)
            phi2 = phi1 / h_safe + 1.0
            phi3 = phi2 / h_safe - 0.5
            q = r0 / (r0 + r1)
            d1_0 = phi2 * (1.0 + q) - phi3 / (r0 + r1)  # the weights of (m0 - m1) / r0 and
            d1_1 = phi3 / (r0 + r1) - phi2 * q  # (m1 - m2) / r1
            rows.append((-phi1, d1_0 / r0, d1_1 / r1))
    table = jnp.stack([jnp.stack([jnp.asarray(w, h.dtype) for w in row]) for row in rows[:order]])
    return tuple(table[k])


@eqx.filter_jit
def _dpm_solver(key, model, shape, ts, order_index, order, stochastic, save):
    process = model.process
    ts, a, s, lam = _log_snr_grid(process, ts)
    num_steps = ts.shape[0] - 1  # the last is the denoising step, at order 1: x0(x_N, t_eps)
    if stochastic:  # as ddim: the prior from one half of the key, step i's noise from the other
        prior_key, key = jax.random.split(key)
        step_keys = jax.random.split(key, num_steps)
    else:
        prior_key, step_keys = key, None
    x = process.prior_sample(prior_key, shape)
    batch = shape[:1]

    def step(carry, inputs):
        x, m1, m2, h1, h2 = carry
        i, k, z_key = inputs  # from t_{i-1} to t_i
        m0 = model.x0(x, jnp.full(batch, ts[i - 1]))
        h = lam[i] - lam[i - 1]
        w0, w1, w2 = _dpm_weights(h, h1, h2, k, order, stochastic)
        if stochastic:
            z = jax.random.normal(z_key, shape, x.dtype)
            base = (s[i] / s[i - 1]) * jnp.exp(-h) * x + s[i] * jnp.sqrt(-jnp.expm1(-2.0 * h)) * z
        else:
            base = (s[i] / s[i - 1]) * x
        x_new = base + a[i] * (w0 * m0 + w1 * (m0 - m1) + w2 * (m1 - m2))
        return x_new, m0, m1, h, h1

    zeros = jnp.zeros_like(x)
    one = jnp.ones((), lam.dtype)
    carry = (x, zeros, zeros, one, one)
    xs = (jnp.arange(1, num_steps + 1), jnp.append(order_index, 0), step_keys)
    (x, *_), saved = drv.scan_saving(step, carry, xs, ts, save)
    return x, saved


# ---------------------------------------------------------------- UniPC
@eqx.filter_jit
def _unipc(key, model, shape, ts, order_index, order, variant, save):
    process = model.process
    num_steps = ts.shape[0] - 1
    _, a, s, lam = _log_snr_grid(process, ts)
    x = process.prior_sample(key, shape)
    batch = shape[:1]

    def step(carry, inputs):
        # x = x_{i-1} (corrected); m0, m1, m2 = m_{i-1}, m_{i-2}, m_{i-3}; h1, h2 = h_{i-1}, h_{i-2}
        x, m0, m1, m2, h1, h2 = carry
        i, k = inputs  # from t_{i-1} to t_i, predictor order k + 1; i = 0: m_0 = x0(x_T, t_max)
        prev = jnp.maximum(i - 1, 0)
        h = jnp.where(i > 0, lam[i] - lam[prev], 1.0)  # any h != 0 at i = 0 (base is then x_T)
        z = -h
        phi1 = jnp.expm1(z)
        b_h = z if variant == "bh1" else phi1
        g, c, fact = [], phi1 / z - 1.0, 1.0  # c = z phi_{j+1}(z)
        for j in range(1, order + 1):
            g.append(c * fact / b_h)
            fact *= j + 1
            c = c / z - 1.0 / fact
        base = (s[i] / s[prev]) * x - a[i] * phi1 * m0
        r1, r2 = -h1 / h, -(h1 + h2) / h
        d1, d2 = (m1 - m0) / r1, (m2 - m0) / r2

        # The weights of every order, indexed by the traced k: no branch (on a GPU each
        # `lax.switch` reads its index back to the host). Predictor: weights of (d1, d2);
        # corrector: of (d1, d2, d_t = m_new - m0).
        rows = [(0.0, 0.0, 0.0, 0.0, 0.5)]  # (p1, p2, c1, c2, ct) of order 1
        if order > 1:
            w1, wt = _vandermonde_solve((r1, 1.0), g[:2])
            rows.append((0.5, 0.0, w1, 0.0, wt))
        if order > 2:
            rows.append((*_vandermonde_solve((r1, r2), g[:2]), *_vandermonde_solve((r1, r2, 1.0), g)))
        table = jnp.stack([jnp.stack([jnp.asarray(w, h.dtype) for w in row]) for row in rows])
        p1, p2, c1, c2, ct = table[k]
        x_pred = base - a[i] * b_h * (p1 * d1 + p2 * d2)
        m_new = model.x0(x_pred, jnp.full(batch, ts[i]))
        x_corr = base - a[i] * b_h * (c1 * d1 + c2 * d2 + ct * (m_new - m0))
        # no corrector at i = 0 (nothing predicted) nor after the last step
        x_new = jnp.where((i > 0) & (i < num_steps), x_corr, x_pred)
        return x_new, m_new, m0, m1, h, h1

    zeros = jnp.zeros_like(x)
    one = jnp.ones((), lam.dtype)
    carry = (x, zeros, zeros, zeros, one, one)
    xs = (jnp.arange(num_steps + 1), jnp.append(0, order_index))
    grid = jnp.concatenate([ts[:1], ts])  # the state after step i is at t_i
    (_, m_last, *_), saved = drv.scan_saving(step, carry, xs, grid, save)
    return m_last, saved  # x0(x_N, t_eps), evaluated by the last step
