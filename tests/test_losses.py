"""Losses: exact-score optimality of DSM for every prediction/weighting (and of flow matching on
the rectified-flow path), the DDPM bound against the exact Gaussian entropy, the VAE ELBO
against probabilistic PCA, validation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import diffjax as dj
from diffjax import losses, schedules
from diffjax.model import PREDICTIONS

SDE = dj.VPSDE(beta_min=0.1, beta_max=20.0)
DELTA = 0.25  # perturbation size of the scalar c in (1 + c) * exact eps
NUM_KEYS = 8
BATCH = 1024

# Every prediction (eps, x0, score, v, velocity) with the "simple" weighting, and every other
# weighting with a `v` network.
COMBOS = [(p, "simple", False) for p in PREDICTIONS] + [
    ("v", "likelihood", False),
    ("x0", "likelihood", True),
    ("v", "snr", False),
    ("score", "min_snr", False),
]


def _model(dist, process, prediction):
    """`apply(params, x, t)`: the exact eps scaled by `1 + c` plus a constant shift `b`, as
    `prediction` (the `Model` view of that eps model); affine in `(c, b)`, exact at
    `c = 0, b = 0`."""
    exact = dj.exact_model(dist, process, "eps")

    def apply(params, x, t):
        perturbed = dj.Model(
            lambda x, t: (1.0 + params["c"]) * exact(x, t) + params["b"], process, "eps"
        )
        return perturbed.predict(prediction, x, t)

    return apply


@pytest.fixture(scope="module")
def data(eight_gaussians):
    return eight_gaussians.sample(jax.random.key(0), BATCH)


@pytest.mark.parametrize("prediction,weighting,importance", COMBOS)
def test_dsm_exact_score_is_the_optimum(eight_gaussians, data, prediction, weighting, importance):
    """The exact eps of the mixture minimises the DSM loss for every prediction and weighting.

    The loss is quadratic in `c` for the model `(1 + c) eps_exact`; from `L(-d), L(0), L(d)`
    per key the minimiser is `c* = -B / (2A)`, `B = (L(d) - L(-d)) / 2d`,
    `A = (L(d) + L(-d) - 2 L(0)) / 2d^2`. With 8 keys x 1024 points, `c*` must be within
    4 standard errors (+0.003) of 0 (measured |c*| <= 0.003). `score`/`simple` runs with
    `t_eps = 1e-3`: its `1/s^2` weight makes the estimate heavy-tailed at `t_eps = 1e-5`
    (|c*| ~ 0.06 +- 0.05 there, still consistent with 0). A constant shift
    `b` of the eps (another direction) raises the loss too, and the gradient is finite and
    non-zero away from the optimum.
    """
    apply = _model(eight_gaussians, SDE, prediction)
    t_eps = 1e-3 if (prediction, weighting) == ("score", "simple") else 1e-5

    def loss(c, b, key):
        params = {"c": jnp.asarray(c), "b": b}
        return losses.dsm(
            params,
            apply,
            key,
            data,
            SDE,
            prediction=prediction,
            weighting=weighting,
            importance_sampling=importance,
            t_eps=t_eps,
        )[0]

    direction = jnp.array([0.6, -0.8])

    @jax.jit
    def evaluate(keys):
        def one(key):
            vals = [loss(c, jnp.zeros(2), key) for c in (-DELTA, 0.0, DELTA)]
            vals += [loss(0.0, DELTA * direction, key)]
            return jnp.stack(vals)

        grads = jax.grad(lambda p: loss(p["c"], p["b"], keys[0]))(
            {"c": jnp.asarray(DELTA), "b": DELTA * direction}
        )
        return jax.vmap(one)(keys), grads

    vals, grads = evaluate(jax.random.split(jax.random.key(1), NUM_KEYS))
    vals = np.asarray(vals, np.float64)
    assert np.all(np.isfinite(vals))
    lo, mid, hi, shifted = vals.T
    slope = (hi - lo) / (2 * DELTA)
    curv = (hi + lo - 2 * mid) / (2 * DELTA**2)
    assert np.all(curv > 0)
    c_star = -slope.mean() / (2 * curv.mean())
    c_se = np.std(-slope / (2 * curv), ddof=1) / math.sqrt(NUM_KEYS)
    assert abs(c_star) < 4 * c_se + 3e-3, (c_star, c_se)
    # Same keys: the exact model is lower than every perturbed one (means over the keys).
    assert mid.mean() < min(lo.mean(), hi.mean(), shifted.mean())
    for g in jax.tree.leaves(grads):
        assert np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0)


FM_KEYS = 32  # keys of the flow-matching / EDM checks, each a batch of 1024 points


def _exact_edm_net(gmm, process, sigma_data):
    """The raw network `F` whose EDM-preconditioned denoiser is the exact `E[x_0 | x_t]`:
    `F = (D - c_skip x^) / c_out` at the noise level `sigma = e^{4 c_noise}`, `x^ = x_in / c_in`."""
    exact = dj.exact_model(gmm, process, "x0")

    def net(p, x_in, c_noise):
        t = process.t_from_log_snr(-4.0 * c_noise)
        a, s = (c[:, None] for c in process.marginal(t))
        r = jnp.sqrt(s**2 + (a * sigma_data) ** 2)
        x = r * x_in
        return (exact(x, t) - sigma_data**2 * a / r**2 * x) / (s * sigma_data / r) + p

    return net


def _velocity_net(gmm, process):
    exact = dj.exact_model(gmm, process, "velocity")
    return lambda p, x, t: exact(x, t) + p


# name -> loss(p, key, x0, gmm) with a network `exact + p`, p in R^2
OPTIMUM_CASES = {
    "dsm_velocity_rf": lambda p, k, x0, g: losses.dsm(
        p, _velocity_net(g, dj.RectifiedFlow()), k, x0, dj.RectifiedFlow(), prediction="velocity"
    )[0],
    "flow_matching_logit_normal": lambda p, k, x0, g: losses.flow_matching(
        p, _velocity_net(g, dj.RectifiedFlow()), k, x0, time_sampling="logit_normal"
    )[0],
    "flow_matching_cosine": lambda p, k, x0, g: losses.flow_matching(
        p, _velocity_net(g, dj.Cosine()), k, x0, dj.Cosine()
    )[0],
    "edm": lambda p, k, x0, g: losses.edm(p, _exact_edm_net(g, dj.EDM(), 0.5), k, x0)[0],
    "edm_on_vp": lambda p, k, x0, g: losses.edm(
        p, _exact_edm_net(g, dj.VPSDE(), 0.5), k, x0, dj.VPSDE()
    )[0],
}


@pytest.mark.parametrize("case", list(OPTIMUM_CASES))
def test_flow_matching_and_edm_exact_model_is_the_optimum(case, eight_gaussians):
    """Conditional flow matching (`dsm(prediction="velocity")`, `losses.flow_matching` with
    uniform or logit-normal times, on RF and cosine paths; target `a' x_0 + s' eps`) and the EDM
    loss (on EDM and, through log-SNR matching, on VP) are minimised by the exact model.

    The network is `exact + p` with an additive `p` in R^2 (for EDM, on the raw `F`, whose
    error reaches the loss with weight `lambda c_out^2 = 1`). At `p = 0` the gradient
    `2 E[exact - target] / D` is zero in expectation (the exact model is the conditional mean
    of the target under the data distribution, so each key draws its own 1024 data points: with
    one fixed batch the expectation given that batch is not zero): over 32 keys x 1024 points,
    each component's mean gradient is within 4 standard errors (of the spread over keys) of 0
    (a Student t with 31 dof: a false failure has probability about 4e-4 per component). At
    `p = delta d` it is `2 delta d / D`, which the same check recovers (so it could fail). The
    exact model's mean loss is lower than at `p = +-delta e_i` and `delta d`, by `|p|^2 / D` up
    to `2 p . grad` (4 s.e.).
    """
    dim = 2
    fn = OPTIMUM_CASES[case]

    def loss(p, key):
        k_data, k_loss = jax.random.split(key)
        return fn(p, k_loss, eight_gaussians.sample(k_data, BATCH), eight_gaussians)

    direction = jnp.array([0.6, -0.8])
    perturbations = jnp.stack(
        [DELTA * jnp.eye(dim)[0], -DELTA * jnp.eye(dim)[0], DELTA * jnp.eye(dim)[1],
         -DELTA * jnp.eye(dim)[1], DELTA * direction]
    )  # fmt: skip

    @jax.jit
    def evaluate(keys):
        def one(key):
            value, grad = jax.value_and_grad(loss)(jnp.zeros(dim), key)
            grad_off = jax.grad(loss)(DELTA * direction, key)
            perturbed = jax.vmap(lambda p: loss(p, key))(perturbations)
            return value, grad, grad_off, perturbed

        return jax.vmap(one)(keys)

    value, grad, grad_off, perturbed = (
        np.asarray(v, np.float64) for v in evaluate(jax.random.split(jax.random.key(14), FM_KEYS))
    )
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    se = grad.std(axis=0, ddof=1) / np.sqrt(FM_KEYS)
    assert np.all(np.abs(grad.mean(axis=0)) < 4 * se), (grad.mean(axis=0), se)
    expected_off = 2 * DELTA * np.asarray(direction) / dim
    se_off = grad_off.std(axis=0, ddof=1) / np.sqrt(FM_KEYS)
    assert np.all(np.abs(grad_off.mean(axis=0) - expected_off) < 4 * se_off)
    assert np.all(np.abs(expected_off) > 8 * se_off)  # the check has power: |2 delta d / D| >> s.e.
    # Same keys (data, times, noise): the exact model is lower than every perturbed one (means
    # over the keys; on one key `2 p . grad` can exceed `|p|^2 / D`).
    assert np.all(value.mean() < perturbed.mean(axis=0))
    excess = perturbed - value[:, None]  # [keys, 5]
    expected = np.sum(np.asarray(perturbations) ** 2, axis=1) / dim
    se_ex = excess.std(axis=0, ddof=1) / np.sqrt(FM_KEYS)
    assert np.all(np.abs(excess.mean(axis=0) - expected) < 4 * se_ex + 1e-6)


def test_likelihood_importance_sampling_has_the_same_expectation(eight_gaussians, data):
    """`importance_sampling=True` changes the variance, not the mean: with `t_eps = 1e-2` (so the
    uniform-time estimator has a finite variance), both means over 32 keys agree within 4
    combined standard errors, and the IS estimator's spread is smaller."""
    apply = _model(eight_gaussians, SDE, "eps")
    params = {"c": jnp.asarray(0.2), "b": jnp.zeros(2)}

    @jax.jit
    def both(key):
        kw = dict(weighting="likelihood", t_eps=1e-2)
        uni = losses.dsm(params, apply, key, data[:512], SDE, **kw)[0]
        imp = losses.dsm(params, apply, key, data[:512], SDE, importance_sampling=True, **kw)[0]
        return uni, imp

    uni, imp = (
        np.asarray(v, np.float64) for v in jax.vmap(both)(jax.random.split(jax.random.key(2), 32))
    )
    se = math.sqrt(uni.var(ddof=1) / uni.size + imp.var(ddof=1) / imp.size)
    assert abs(uni.mean() - imp.mean()) < 4 * se, (uni.mean(), imp.mean(), se)
    assert imp.std() < uni.std()


def test_importance_times_follow_the_vp_closed_form():
    """For VP, `p(t) ∝ g^2 / s^2 = -2 d lambda / dt` (lambda the half log-SNR), so the CDF on
    `[t_eps, T]` is `(lambda(t_eps) - lambda(t)) / (lambda(t_eps) - lambda(T))`; the tabulated
    sampler passes a Kolmogorov–Smirnov test against it (20000 draws, p > 0.001), and the
    returned ratio `h(t) / p(t)` is the normaliser `2 (lambda(t_eps) - lambda(T))` to 1%."""
    t_eps = 1e-5
    t, ratio = losses._likelihood_times(SDE, jax.random.key(3), 20000, t_eps)
    lam = lambda s: float(SDE.log_snr(jnp.asarray(s)))
    lam0, lam1 = lam(t_eps), lam(SDE.T)

    def cdf(s):
        return (lam0 - np.asarray(SDE.log_snr(jnp.asarray(s, jnp.float32)))) / (lam0 - lam1)

    assert scipy.stats.kstest(np.asarray(t), cdf).pvalue > 1e-3
    np.testing.assert_allclose(np.asarray(ratio), 2 * (lam0 - lam1), rtol=1e-2)


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_ddpm_loss_exact_eps_is_the_optimum(eight_gaussians, data, prediction):
    """The notes' training loss at integer steps: minimiser `c* ~ 0` for `(1 + c) eps_exact`
    (same quadratic fit as above), and the exact eps is lower than the perturbed ones."""
    sch = schedules.linear(200)
    apply = _model(eight_gaussians, sch, prediction)

    @jax.jit
    def evaluate(keys):
        def one(key):
            return jnp.stack(
                [
                    losses.ddpm(
                        {"c": c, "b": jnp.zeros(2)}, apply, key, data, sch, prediction=prediction
                    )[0]
                    for c in (-DELTA, 0.0, DELTA)
                ]
            )

        return jax.vmap(one)(keys)

    lo, mid, hi = np.asarray(evaluate(jax.random.split(jax.random.key(4), NUM_KEYS)), np.float64).T
    c_each = -((hi - lo) / (2 * DELTA)) / (2 * (hi + lo - 2 * mid) / (2 * DELTA**2))
    assert abs(c_each.mean()) < 4 * c_each.std(ddof=1) / math.sqrt(NUM_KEYS) + 3e-3
    assert np.all(mid < lo) and np.all(mid < hi)


def test_labels_are_passed_to_the_network(data):
    """With `labels`, `apply_fn(params, x, t, labels)` is called; same key, same loss."""
    seen = {}

    def apply(params, x, t, y):
        seen["y"] = y
        return jnp.zeros_like(x) + params * y[:, None]

    labels = jnp.arange(BATCH) % 3
    key = jax.random.key(5)
    a = losses.dsm(jnp.asarray(0.1), apply, key, data, SDE, labels=labels)[0]
    b = losses.dsm(jnp.asarray(0.1), apply, key, data, SDE, labels=labels)[0]
    assert seen["y"].shape == (BATCH,) and float(a) == float(b)
    c = losses.ddpm(jnp.asarray(0.1), apply, key, data, schedules.linear(10), labels=labels)[0]
    assert np.isfinite(float(c))


# ----------------------------------------------------------------------------- the DDPM bound

VAR = 0.25  # data N(0, 0.5^2 I) in 2-D: p_0 and every noised marginal are analytic


def _vp_schedule(num_steps: int, t_eps: float = 0.01) -> dj.DiscreteSchedule:
    """The VP SDE (beta_min 0.1, beta_max 8) sampled at step 1 -> t_eps and then uniformly in
    time: alpha_bar(1) (hence the decoder variance beta_1) is the same for every T."""
    sde = dj.VPSDE(beta_min=0.1, beta_max=8.0)
    times = t_eps + (1.0 - t_eps) * np.arange(num_steps) / (num_steps - 1)
    alpha_bar = np.concatenate(
        [[1.0], np.exp(2 * np.asarray(sde.log_mean_coeff(times), np.float64))]
    )
    return schedules.from_betas(1.0 - alpha_bar[1:] / alpha_bar[:-1])


def _expected_gap_bpd(sch: dj.DiscreteSchedule) -> float:
    """E_{x_0, x_t}[bound] - H(p_0) per dimension in bits, for x_0 ~ N(0, VAR), in closed form.

    With `mmse_t = VAR s_t^2 / (a_t^2 VAR + s_t^2)` per dimension (Gaussian posterior of x_0):
    prior `(a_T^2 VAR + s_T^2 - 1 - log s_T^2) / 2`, steps `(SNR_{t-1} - SNR_t) mmse_t / 2`,
    decoder `(mmse_1 / beta_1 + log(2 pi beta_1)) / 2`, entropy `log(2 pi e VAR) / 2`.
    """
    ab = np.asarray(sch.alpha_bars, np.float64)
    num_steps = ab.size - 1
    s2 = 1.0 - ab
    mmse = VAR * s2 / (ab * VAR + s2)
    snr = ab[1:] / s2[1:]
    prior = 0.5 * (ab[-1] * VAR + s2[-1] - 1.0 - math.log(s2[-1]))
    steps = 0.5 * np.sum((snr[:-1] - snr[1:]) * mmse[2 : num_steps + 1])
    beta_1 = 1.0 - ab[1]
    decoder = 0.5 * (mmse[1] / beta_1 + math.log(2 * math.pi * beta_1))
    entropy = 0.5 * math.log(2 * math.pi * math.e * VAR)
    return (prior + steps + decoder - entropy) / math.log(2.0)


def test_ddpm_vlb_bounds_the_exact_nll_and_tightens_with_T():
    """`ddpm_vlb` with the exact eps of Gaussian data N(0, 0.5^2 I_2) upper-bounds the exact NLL.

    The bound is on `-log p_theta(x_0)` for the Gaussian-decoder model, a continuous density, so
    in expectation over data it bounds the cross-entropy and hence the entropy `E[-log p_0]`
    (per example it need not). Here every term's expectation is analytic
    (`_expected_gap_bpd`), so the test checks (i) the per-example bits/dim minus the exact
    `-log p_0(x_0)` average to the analytic gap within 4 standard errors (4096 examples, one
    `x_t` per step), (ii) the analytic gap is positive and shrinks with T: 25.85, 0.872, 0.0711
    bits/dim at T = 10, 100, 1000 (about 1/T), with beta_1 held fixed, and (iii) at T = 1000 the
    Monte Carlo gap is positive by more than 3 standard errors.

    (A linear schedule with `beta_1 ∝ 1/T` instead keeps a floor: its gaps are 3.97, 1.05, 0.53
    bits/dim, tending to `gamma_Euler / (2 log 2) = 0.42` — the first steps always halve the SNR.)
    """
    dist = dj.gaussian(jnp.zeros(2), math.sqrt(VAR))
    x0 = dist.sample(jax.random.key(6), 4096)
    nll_bits = -np.asarray(dist.log_prob(x0), np.float64) / (2 * math.log(2.0))
    gaps = []
    for num_steps in (10, 100, 1000):
        sch = _vp_schedule(num_steps)
        vlb = jax.jit(
            lambda key, x, sch=sch: losses.ddpm_vlb(
                dj.exact_model(dist, sch, "eps"), key, x, return_terms=True
            )
        )
        bpd, terms = vlb(jax.random.key(7), x0)
        assert bpd.shape == (4096,) and terms["per_step"].shape == (4096, num_steps - 1)
        total = (terms["prior"] + terms["diffusion"] + terms["decoder"]) / (2 * math.log(2.0))
        np.testing.assert_allclose(total, bpd, rtol=1e-5, atol=1e-5)
        diff = np.asarray(bpd, np.float64) - nll_bits
        se = diff.std(ddof=1) / math.sqrt(diff.size)
        expected = _expected_gap_bpd(sch)
        assert abs(diff.mean() - expected) < 4 * se + 1e-3, (num_steps, diff.mean(), expected, se)
        gaps.append((expected, diff.mean(), se))
    expected = [g[0] for g in gaps]
    assert expected[0] > expected[1] > expected[2] > 0
    assert gaps[2][1] > 3 * gaps[2][2]


def test_ddpm_vlb_single_step_and_chunking():
    """T = 1 has no KL steps (prior + decoder only) and still matches its analytic expectation
    (4 s.e.); the chunk size of the `lax.map` over steps does not change the result."""
    dist = dj.gaussian(jnp.zeros(2), math.sqrt(VAR))
    x0 = dist.sample(jax.random.key(8), 1024)
    one, twenty = schedules.linear(1, 0.5, 0.5), schedules.linear(20)

    @jax.jit
    def evaluate(key):
        single = losses.ddpm_vlb(dj.exact_model(dist, one, "eps"), key, x0, return_terms=True)
        model = dj.exact_model(dist, twenty, "eps")
        chunked = [losses.ddpm_vlb(model, key, x0, chunk_size=n) for n in (3, 19)]
        return single, chunked

    (bpd, terms), (a, b) = evaluate(jax.random.key(9))
    assert terms["per_step"].shape == (1024, 0)
    diff = np.asarray(bpd, np.float64) + np.asarray(dist.log_prob(x0)) / (2 * math.log(2.0))
    se = diff.std(ddof=1) / math.sqrt(diff.size)
    assert abs(diff.mean() - _expected_gap_bpd(one)) < 4 * se + 1e-3
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- VAE ELBO


def _ppca():
    """x = W z + b + sigma eps, z ~ N(0, I_2), x in R^4, with orthogonal columns of W so the
    exact posterior `N(M^-1 W^T (x - b), sigma^2 M^-1)`, `M = W^T W + sigma^2 I`, is diagonal."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 2)))
    w = q * np.array([1.5, 0.7])
    b = np.array([0.3, -0.2, 0.1, 0.5])
    sigma = 0.4
    m_inv = np.diag(1.0 / np.diag(w.T @ w + sigma**2 * np.eye(2)))
    return w, b, sigma, m_inv


def test_vae_elbo_is_tight_at_the_exact_posterior_and_lower_otherwise():
    """ELBO <= log p(x) = log N(x | b, W W^T + sigma^2 I), with equality for q(z|x) = p(z|x).

    Exact encoder: the mean ELBO over 16 points x 4096 draws equals log p(x) within 4 standard
    errors. Perturbed encoder (mean shifted by 0.3, log-std by +0.2): the ELBO is lower by
    `KL(q || p(z|x))`, checked against that Gaussian KL in closed form, within 4 s.e.
    """
    w, b, sigma, m_inv = _ppca()
    x = np.random.default_rng(1).normal(size=(16, 4)) + b
    log_px = scipy.stats.multivariate_normal(b, w @ w.T + sigma**2 * np.eye(4)).logpdf(x)
    post_log_std = 0.5 * np.log(sigma**2 * np.diag(m_inv))

    def vae(shift, log_shift):
        def encode(params, xx):
            mean = (xx - params["b"]) @ params["w"] @ m_inv + shift
            return mean, jnp.broadcast_to(post_log_std + log_shift, mean.shape)

        def decode(params, z):
            return z @ params["w"].T + params["b"]

        return losses.VAEApply(encode, decode)

    params = {"w": jnp.asarray(w), "b": jnp.asarray(b)}
    keys = jax.random.split(jax.random.key(11), 4096)
    for shift, log_shift in ((0.0, 0.0), (0.3, 0.2)):
        fns = vae(shift, log_shift)
        elbo = jax.jit(
            jax.vmap(
                lambda k, fns=fns: losses.vae_elbo(params, fns, k, jnp.asarray(x), obs_std=sigma)[
                    1
                ]["elbo"]
            )
        )
        per_key = np.asarray(elbo(keys), np.float64)  # mean ELBO over the 16 points, per key
        q_var = np.exp(2 * (post_log_std + log_shift))
        p_var = np.exp(2 * post_log_std)
        kl = 0.5 * np.sum(q_var / p_var + shift**2 / p_var - 1 - np.log(q_var / p_var), axis=-1)
        expected = np.mean(log_px) - np.mean(kl)
        se = per_key.std(ddof=1) / math.sqrt(per_key.size)
        assert abs(per_key.mean() - expected) < 4 * se + 1e-4, (shift, per_key.mean(), expected, se)
        if shift:
            assert np.mean(kl) > 20 * se  # strictly lower, far beyond the noise
        else:
            assert np.mean(kl) == 0.0


def test_vae_elbo_learned_sigma_gradient():
    """`obs_std` computed from params gets a gradient; metrics add up: elbo = recon - kl."""
    w, b, sigma, m_inv = _ppca()

    def loss(params):
        fns = losses.VAEApply(
            lambda p, x: ((x - b) @ w @ m_inv, jnp.zeros((x.shape[0], 2))),
            lambda p, z: z @ w.T + b,
        )
        return losses.vae_elbo(
            params, fns, jax.random.key(0), jnp.ones((8, 4)), obs_std=jnp.exp(params["log_sigma"])
        )

    (val, metrics), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        {"log_sigma": jnp.asarray(0.0)}
    )
    assert np.isfinite(grad["log_sigma"]) and grad["log_sigma"] != 0
    np.testing.assert_allclose(
        metrics["elbo"], metrics["reconstruction"] - metrics["kl"], rtol=1e-5
    )
    np.testing.assert_allclose(val, -metrics["elbo"])


# ----------------------------------------------------------------------------- classifier




@pytest.mark.parametrize(
    "process",
    [dj.VPSDE(), schedules.linear(50)],
    ids=["vp", "ddpm"],
)
def test_classifier_loss_exact_posterior_is_the_optimum(eight_gaussians, process):
    """Logits `(1 + c) log p_t(k | x_t)` (the exact component posterior) for continuous and
    integer times: the cross-entropy is lowest at `c = 0` and its quadratic-fit minimiser is
    `|c*| < 0.05` (the loss is smooth, not exactly quadratic, in c); accuracy beats chance."""
    x0, comp = eight_gaussians.sample_with_components(jax.random.key(12), 4096)
    apply = lambda p, x, t: (1.0 + p) * eight_gaussians.component_log_posterior(x, process, t)

    @jax.jit
    def evaluate():
        out = [
            losses.classifier(c, apply, jax.random.key(13), x0, comp, process)
            for c in (-DELTA, 0.0, DELTA)
        ]
        return jnp.stack([o[0] for o in out]), out[1][1]["accuracy"]

    vals, accuracy = evaluate()
    lo, mid, hi = (float(v) for v in vals)
    c_star = -((hi - lo) / (2 * DELTA)) / (2 * (hi + lo - 2 * mid) / (2 * DELTA**2))
    assert mid < min(lo, hi) and abs(c_star) < 0.05, (lo, mid, hi, c_star)
    assert 0.25 < float(accuracy) <= 1.0  # chance is 1/8


# ----------------------------------------------------------------------------- validation


def test_bad_input_gives_clear_errors(data):
    key = jax.random.key(0)
    ok = lambda p, x, t: jnp.zeros_like(x)
    with pytest.raises(ValueError, match="prediction"):
        losses.dsm(None, ok, key, data, SDE, prediction="noise")
    with pytest.raises(ValueError, match="weighting"):
        losses.dsm(None, ok, key, data, SDE, weighting="uniform")
    with pytest.raises(ValueError, match="importance_sampling"):
        losses.dsm(None, ok, key, data, SDE, importance_sampling=True)
    with pytest.raises(ValueError, match="t_eps"):
        losses.dsm(None, ok, key, data, SDE, t_eps=1.5)
    with pytest.raises(ValueError, match="shape of x"):
        losses.dsm(None, lambda p, x, t: x[:, :1], key, data, SDE)
    with pytest.raises(ValueError, match="shape of x"):
        losses.ddpm(None, lambda p, x, t: x[:-1], key, data, schedules.linear(10))
    with pytest.raises(TypeError, match="process"):
        losses.dsm(None, ok, key, data, schedules.linear(10))
    with pytest.raises(TypeError, match="schedule"):
        losses.ddpm(None, ok, key, data, SDE)
    with pytest.raises(TypeError, match="key"):
        losses.dsm(None, ok, 0, data, SDE)
    with pytest.raises(TypeError, match="apply_fn"):
        losses.dsm(None, "net", key, data, SDE)
    with pytest.raises(ValueError, match="labels"):
        losses.dsm(None, lambda p, x, t, y: x, key, data, SDE, labels=jnp.zeros(3, jnp.int32))
    with pytest.raises(TypeError, match="labels"):
        losses.dsm(None, lambda p, x, t, y: x, key, data, SDE, labels=jnp.zeros(BATCH))
    sch5 = schedules.linear(5)
    with pytest.raises(ValueError, match="model"):
        losses.ddpm_vlb(dj.Model(lambda x, t: x[:, :1], sch5, "x0"), key, data)
    with pytest.raises(ValueError, match="chunk_size"):
        losses.ddpm_vlb(dj.Model(lambda x, t: x, sch5, "eps"), key, data, chunk_size=0)
    # `ddpm_vlb` takes a Model on a schedule: not a bare function, not a continuous model.
    with pytest.raises(TypeError, match="model"):
        losses.ddpm_vlb(lambda x, t: x, key, data)
    with pytest.raises(TypeError, match="DiscreteSchedule"):
        losses.ddpm_vlb(dj.Model(lambda x, t: x, SDE, "eps"), key, data)
    enc = lambda p, x: (jnp.zeros((x.shape[0], 2)), jnp.zeros((x.shape[0], 2)))
    with pytest.raises(ValueError, match="decode"):
        losses.vae_elbo(None, losses.VAEApply(enc, lambda p, z: z[:, :1]), key, data)
    with pytest.raises(ValueError, match="encode"):
        losses.vae_elbo(None, losses.VAEApply(lambda p, x: (x, x[:, :1]), ok), key, data)
    with pytest.raises(ValueError, match="obs_std"):
        losses.vae_elbo(None, losses.VAEApply(enc, lambda p, z: z), key, data, obs_std=jnp.ones(5))
    with pytest.raises(TypeError, match="vae_apply"):
        losses.vae_elbo(None, enc, key, data)
    with pytest.raises(TypeError, match="labels"):
        losses.classifier(None, ok, key, data, jnp.zeros(BATCH), SDE)
    with pytest.raises(ValueError, match="logits"):  # the same check on a schedule
        losses.classifier(
            None, lambda p, x, t: x[:, 0], key, data, jnp.zeros(BATCH, jnp.int32),
            schedules.linear(10),
        )  # fmt: skip


def test_labels_out_of_range_are_refused_also_under_jit(data):
    """A label below 0 or above the null label (dsm), or not below the classifier's number of
    classes (a NaN cross-entropy before), is a named error: at once when the labels are
    concrete, at run time under `jit`."""
    key = jax.random.key(0)
    net = lambda p, x, t, y: x + y[:, None]  # uses the labels (else their check is dead code)
    logits = lambda p, x, t: jnp.zeros((x.shape[0], 3))
    good = jnp.zeros(BATCH, jnp.int32)
    calls = {
        "dsm": lambda y: losses.dsm(None, net, key, data, SDE, labels=y, null_label=3)[0],
        "classifier": lambda y: losses.classifier(None, logits, key, data, y, SDE)[0],
    }
    for name, call in calls.items():
        assert np.isfinite(float(call(good)))
        for bad in (-1, 3 if name == "classifier" else 4):
            labels = good.at[1].set(bad)
            with pytest.raises(ValueError, match="`labels` must be class labels"):
                call(labels)
            with pytest.raises(Exception, match="`labels` must be class labels"):
                jax.block_until_ready(jax.jit(call)(labels))
    assert np.isfinite(float(jax.jit(calls["dsm"])(good.at[1].set(3))))  # the null label


def test_classifier_loss_bad_logits_on_an_sde(data):
    with pytest.raises(ValueError, match="logits"):
        losses.classifier(
            None, lambda p, x, t: x[:, 0], jax.random.key(0), data, jnp.zeros(BATCH, jnp.int32),
            SDE,
        )  # fmt: skip


def test_ddpm_vlb_rejects_an_eps_model_of_the_wrong_shape(data):
    """The old `eps_fn` check: an eps network returning `[B, 1]` for `[B, 2]` data is refused."""
    model = dj.Model(lambda x, t: x[:, :1], schedules.linear(5), "eps")
    with pytest.raises(ValueError, match="model"):
        losses.ddpm_vlb(model, jax.random.key(0), data)


def test_reflow_coupling_of_a_gaussian_and_flow_matching_on_it():
    """Data `N(mu, diag(s^2))` on rectified flow: the exact model's PF-ODE carries `eps`, the
    state at `t_max`, to `x = a_e mu + sd_e (eps - a_m mu) / sd_m` at `t_eps` (the monotone map
    between the Gaussian marginals, `x_t ~ N(a_t mu, sd_t^2)`, `sd_t^2 = a_t^2 s^2 + sigma_t^2`),
    so `reflow_coupling` returns those pairs. On them `x_t = (1 - t) x + t eps` determines `eps`, so flow matching
    with `noise=eps` is 0 at the reflowed velocity `eps - x` written as a function of `x_t`,
    while on independent pairs the same network pays the conditional variance."""
    mu, s = jnp.array([0.5, -1.0]), jnp.array([0.3, 2.0])
    process = dj.RectifiedFlow()
    model = dj.exact_model(dj.gaussian(mu, s), process)
    x0, eps, info = dj.samplers.reflow_coupling(jax.random.key(0), model, (2048, 2))
    assert x0.shape == eps.shape == (2048, 2) and int(info.nfe) > 0
    (a_m, sig_m), (a_e, sig_e) = process.marginal(process.t_max), process.marginal(process.t_eps)
    sd_m, sd_e = jnp.hypot(a_m * s, sig_m), jnp.hypot(a_e * s, sig_e)
    shift, scale = (a_e - sd_e * a_m / sd_m) * mu, sd_e / sd_m  # x = shift + scale eps
    np.testing.assert_allclose(x0, shift + scale * eps, atol=2e-4)  # rtol 1e-5 of |x| <= 8

    def reflowed(params, x, t):  # eps - x_0 along the straight lines of the coupling
        t = t[:, None]
        e = (x - (1 - t) * shift) / ((1 - t) * scale + t)
        return e - (shift + scale * e)

    key = jax.random.key(1)
    paired = losses.flow_matching(None, reflowed, key, x0, noise=eps)[0]
    independent = losses.flow_matching(None, reflowed, key, x0)[0]
    assert float(paired) < 1e-4 and float(independent) > 0.1, (paired, independent)
    with pytest.raises(ValueError, match="`noise` must have the shape of `x0`"):
        losses.flow_matching(None, reflowed, key, x0, noise=eps[:10])
    with pytest.raises(TypeError, match="model"):
        dj.samplers.reflow_coupling(key, reflowed, (4, 2))
