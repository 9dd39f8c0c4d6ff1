"""Conditional generation (notes, topic 6) against exact references.

The labelled two-class mixture (`data.two_class_params`, XOR layout) has closed-form noised
marginals, scores and classifiers `p_t(y | x)` at every `t` (`distributions.exact_classifier`), so
`grad log p_t(x) + grad log p_t(y | x)` is the exact score of `p_t(x | y)` and guided samples can
be compared with samples of `p_0(x | y)` (`GaussianMixture.subset`). The class of a sample is the
exact posterior's `argmax_y p_0(y | x)`. Guidance takes a `dj.Model` of any prediction kind and
returns a `Model`, so the same checks run on eps, score, x0 and velocity models.

Energy distances use 4000 vs 4000 samples: the noise level is about 0.0015 in 2-D and 0.0003 in
1-D; thresholds are stated next to the measured values.
"""

from __future__ import annotations

from types import SimpleNamespace

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import optimizations

import diffjax as dj
from diffjax import data, guidance, losses, nets, samplers, training
from diffjax.metrics import energy_distance

N = 4000
TOL = 0.005  # 2-D energy distance to the exact class-conditional: ~3x its noise level
LABELS = np.asarray(data.two_class_params()[3])
NULL = 2  # the null label of the exact conditional models below



# ----------------------------------------------------------------------------- exact references


@pytest.fixture(scope="module")
def two():
    weights, means, stds, labels = data.two_class_params()
    gmm = dj.GaussianMixture(weights, means, stds)
    vp = dj.VPSDE()
    sch = dj.schedules.linear(1000)
    clf0 = dj.distributions.exact_classifier(gmm, vp, labels)
    labels = np.asarray(labels)

    def posterior0(x):
        """Exact `p_0(y | x)`: `[B, 2]`."""
        return jnp.exp(clf0(x, jnp.zeros(x.shape[0])))

    return SimpleNamespace(
        gmm=gmm,
        vp=vp,
        sch=sch,
        score=dj.exact_model(gmm, vp, "score"),
        eps_vp=dj.exact_model(gmm, vp, "eps"),
        eps_sch=dj.exact_model(gmm, sch, "eps"),
        clf_vp=clf0,
        clf_sch=dj.distributions.exact_classifier(gmm, sch, labels),
        posterior0=posterior0,
        cond=[
            gmm.subset(np.flatnonzero(labels == y)).sample(jax.random.key(10 + y), N)
            for y in (0, 1)
        ],
        full=gmm.sample(jax.random.key(12), N),
    )


def _exact_conditional(gmm, process, prediction: str, calls: list | None = None) -> dj.Model:
    """The exact class-conditional model `model(x, t, y)` of kind `prediction`: label 0 or 1
    gives the exact model of `p(x | y)`, the null label `NULL` the unconditional one.
    `calls` (if given) records the batch shape of every call."""
    models = [
        dj.exact_model(gmm.subset(np.flatnonzero(LABELS == c)), process, prediction) for c in (0, 1)
    ]
    models.append(dj.exact_model(gmm, process, prediction))

    def fn(x, t, y):
        if calls is not None:
            calls.append(x.shape)
        out = jnp.stack([m(x, t) for m in models])  # [3, B, 2]
        return jnp.take_along_axis(out, y[None, :, None], axis=0)[0]

    return dj.Model(fn, process, prediction)


def _batch(key: int = 3, n: int = 64, t_lo: float = 0.01, t_hi: float = 1.0):
    x = jax.random.normal(jax.random.key(key), (n, 2)) * 1.5
    return x, jnp.linspace(t_lo, t_hi, n), jnp.arange(n) % 2


@pytest.fixture(scope="module")
def guided_sde(two):
    """Reverse-SDE samples of class 1 at scales 0, 1, 4 (the scale is an array leaf of the guided
    model, so the three runs share one compilation)."""
    out = {}
    for scale in (0.0, 1.0, 4.0):
        model = guidance.classifier_guidance(two.score, two.clf_vp, 1, scale)
        out[scale] = samplers.reverse_sde(jax.random.key(0), model, (N, 2), num_steps=500)[0]
    return out


def test_scale_one_samples_the_class_conditional(two, guided_sde):
    x = guided_sde[1.0]
    accuracy = float(jnp.mean(two.posterior0(x)[:, 1] > 0.5))
    assert accuracy >= 0.98  # measured 0.999 (the exact p_0(x | y=1) itself: ~0.999)
    assert float(energy_distance(x, two.cond[1])) < TOL  # measured < 0.001


def test_scale_zero_is_unconditional(two, guided_sde):
    x = guided_sde[0.0]
    assert float(energy_distance(x, two.full)) < 0.003  # noise level; measured 1e-4
    assert abs(float(jnp.mean(two.posterior0(x)[:, 1])) - 0.5) < 0.03  # 4 sigma of Bernoulli(1/2)


def test_larger_scale_concentrates(two, guided_sde):
    mean_p = {s: float(jnp.mean(two.posterior0(x)[:, 1])) for s, x in guided_sde.items()}
    assert mean_p[0.0] < mean_p[1.0] < mean_p[4.0]  # measured 0.49, 0.9985, 0.99997
    # Sharper than the conditional: p_t(x) p_t(y|x)^4 is not p_0(x | y).
    assert float(energy_distance(guided_sde[4.0], two.cond[1])) > TOL


# Every sampler takes the guided model unchanged, whatever the kind of the model guided: a score
# model for the SDE samplers and the ODE, an eps model on the schedule (DDIM) and on the VP SDE
# (DPM-Solver).
GUIDED_RUNS = {
    "predictor_corrector": lambda m, y: samplers.predictor_corrector(
        jax.random.key(1), guidance.classifier_guidance(m.score, m.clf_vp, y), (N, 2),
        num_steps=300,
    ),
    "ode": lambda m, y: samplers.ode(
        jax.random.key(1), guidance.classifier_guidance(m.score, m.clf_vp, y), (N, 2),
        stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1e-4),
    ),
    "ddim": lambda m, y: samplers.ddim(
        jax.random.key(1), guidance.classifier_guidance(m.eps_sch, m.clf_sch, y), (N, 2),
        num_steps=50,
    ),
    "dpm_solver": lambda m, y: samplers.dpm_solver(
        jax.random.key(1), guidance.classifier_guidance(m.eps_vp, m.clf_vp, y), (N, 2),
        num_steps=20,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(GUIDED_RUNS))
def test_every_sampler_takes_a_guided_model(name, two, guided_sde):
    x = GUIDED_RUNS[name](two, 0)[0]
    accuracy = float(jnp.mean(two.posterior0(x)[:, 0] > 0.5))
    score_form = float(jnp.mean(two.posterior0(guided_sde[1.0])[:, 1] > 0.5))
    assert accuracy >= 0.98 and abs(accuracy - score_form) < 0.01  # measured 0.998-0.999
    assert float(energy_distance(x, two.cond[0])) < TOL  # measured < 0.001


def test_eps_form_equals_score_form(two):
    """Guiding the eps model or the score model is the same model: its eps view is
    `eps - scale std grad log p(y|x) = -std (s + scale grad log p(y|x))`."""
    x, t, y = _batch()
    std = two.vp.marginal(t)[1][:, None]
    # A Model holds arrays (labels, scale, the mixture), so it is jitted with `eqx.filter_jit`
    # (`jax.jit` needs a hashable function).
    score = eqx.filter_jit(guidance.classifier_guidance(two.score, two.clf_vp, y, 2.5))(x, t)
    from_eps = guidance.classifier_guidance(two.eps_vp, two.clf_vp, y, 2.5)
    eps = eqx.filter_jit(from_eps.eps)(x, t)
    np.testing.assert_allclose(eps, -std * score, rtol=1e-4, atol=1e-5)
    # ... and it is the formula, with the classifier's gradient taken here.
    grad = jax.grad(lambda x_: jnp.sum(jnp.take_along_axis(two.clf_vp(x_, t), y[:, None], axis=1)))(
        x
    )
    np.testing.assert_allclose(eps, two.eps_vp.eps(x, t) - 2.5 * std * grad, rtol=1e-4, atol=1e-5)


def test_classifier_free_is_classifier_guidance_with_an_exact_model(two):
    """With exact conditional models, `(1 + w) eps(x|y) - w eps(x)` equals classifier guidance
    at scale `1 + w`, since `eps(x | y) = eps(x) - std grad log p_t(y | x)`; one network call
    (on the `[2B]` batch) per evaluation."""
    calls = []
    cond = _exact_conditional(two.gmm, two.vp, "eps", calls)
    x, t, y = _batch(4)
    for w in (0.0, 2.0):
        guided = guidance.classifier_free(cond, y, NULL, w)
        before = len(calls)
        eager = guided(x, t)
        assert calls[before:] == [(128, 2)]
        cfg = eqx.filter_jit(guided)(x, t)
        np.testing.assert_allclose(cfg, eager, rtol=1e-5, atol=1e-6)
        cg = eqx.filter_jit(guidance.classifier_guidance(two.eps_vp, two.clf_vp, y, 1.0 + w).eps)(
            x, t
        )
        np.testing.assert_allclose(cfg, cg, rtol=1e-3, atol=1e-4)
    assert set(calls) == {(128, 2)}


def test_changing_labels_or_scale_does_not_recompile(two):
    traces = []

    @eqx.filter_jit
    def apply(model, x, t):
        traces.append(None)
        return model(x, t)

    x, t = jnp.ones((8, 2)), jnp.full((8,), 0.5)
    for y, scale in ((0, 1.0), (1, 3.0), (0, 0.0)):
        apply(guidance.classifier_guidance(two.score, two.clf_vp, y, scale), x, t)
    assert len(traces) == 1


def test_traced_weight_under_jit_and_vmap(two):
    """A guidance weight (classifier-free) or scale (classifier guidance) may be traced: a `vmap`
    over weights of a function that builds the guided model and evaluates it gives what separate
    calls with Python floats give, and so does `jit` with the weight as an argument."""
    cond = _exact_conditional(two.gmm, two.vp, "eps")
    x, t, y = _batch(5, 32)
    weights = jnp.array([0.0, 0.5, 4.0])

    def cfg_eps(w):
        return guidance.classifier_free(cond, y, NULL, w).eps(x, t)

    def cg_score(s):
        return guidance.classifier_guidance(two.eps_vp, two.clf_vp, y, s).score(x, t)

    results = {}
    for fn in (cfg_eps, cg_score):
        batched = results[fn] = jax.jit(jax.vmap(fn))(weights)
        jitted = jax.jit(fn)
        assert batched.shape == (3, 32, 2)
        separate = [fn(float(w)) for w in weights]
        for i, w in enumerate(weights):
            np.testing.assert_allclose(batched[i], separate[i], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(jitted(w), separate[i], rtol=1e-5, atol=1e-5)
        # The weight matters (else the comparison could not fail).
        assert float(jnp.max(jnp.abs(separate[0] - separate[-1]))) > 1e-2
    # The classifier-free output is affine in the weight, the classifier-free formula.
    both = results[cfg_eps]
    uncond, cond_y = dj.exact_model(two.gmm, two.vp, "eps").eps(x, t), both[0]
    for i, w in enumerate(weights):
        np.testing.assert_allclose(both[i], (1 + w) * cond_y - w * uncond, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- any prediction kind


@pytest.fixture(scope="module")
def rf(two):
    """The two-class mixture on the rectified-flow path: exact classifier and exact
    class-conditional score models."""
    process = dj.RectifiedFlow()
    return SimpleNamespace(
        process=process,
        clf=dj.distributions.exact_classifier(two.gmm, process, LABELS),
        cond=[
            dj.exact_model(two.gmm.subset(np.flatnonzero(LABELS == c)), process, "score")
            for c in (0, 1)
        ],
    )


def _select(models, view: str, x, t, y):
    out = jnp.stack([getattr(m, view)(x, t) for m in models])
    return jnp.take_along_axis(out, y[None, :, None], axis=0)[0]


# Away from the ends of the path (sigma -> 0 at t = 0, alpha -> 0 at t = 1), where converting
# between kinds divides by a vanishing coefficient in float32.
T_RANGE = (0.02, 0.98)


@pytest.mark.parametrize("prediction", ["velocity", "x0"])
def test_classifier_guidance_on_any_prediction_kind(two, rf, prediction):
    """Guiding the exact velocity (or x0) model of `p_t(x)` with the exact classifier at scale 1
    is the exact conditional model `p_t(x | y)`: its score, and its velocity view (the PF-ODE
    the samplers integrate), match the exact conditional ones to 1e-4."""
    model = dj.exact_model(two.gmm, rf.process, prediction)
    x, t, y = _batch(6, 64, *T_RANGE)
    guided = guidance.classifier_guidance(model, rf.clf, y, 1.0)
    assert guided.process is rf.process
    score = eqx.filter_jit(guided.score)(x, t)
    np.testing.assert_allclose(score, _select(rf.cond, "score", x, t, y), rtol=1e-4, atol=1e-4)
    velocity = eqx.filter_jit(guided.velocity)(x, t)
    np.testing.assert_allclose(
        velocity, _select(rf.cond, "velocity", x, t, y), rtol=1e-4, atol=1e-4
    )
    # The classifier term is not negligible here (else the check could not fail).
    assert float(jnp.max(jnp.abs(score - model.score(x, t)))) > 0.1


@pytest.mark.parametrize("prediction", ["velocity", "x0"])
def test_classifier_free_on_any_prediction_kind(two, rf, prediction):
    """Classifier-free guidance of exact conditional velocity (x0) models keeps the kind and is
    classifier guidance at scale `1 + w`, in the score and in the velocity view; one call."""
    calls = []
    cond = _exact_conditional(two.gmm, rf.process, prediction, calls)
    uncond = dj.exact_model(two.gmm, rf.process, prediction)
    x, t, y = _batch(7, 64, *T_RANGE)
    for w in (0.0, 2.0):
        cfg = guidance.classifier_free(cond, y, NULL, w)
        assert cfg.prediction == prediction
        cg = guidance.classifier_guidance(uncond, rf.clf, y, 1.0 + w)
        for view in ("score", "velocity"):
            np.testing.assert_allclose(
                eqx.filter_jit(getattr(cfg, view))(x, t),
                getattr(cg, view)(x, t),
                rtol=1e-3,
                atol=1e-4,
            )
    assert set(calls) == {(128, 2)}


def test_guidance_interval(two, rf):
    """A guidance interval covering every time is plain guidance; an empty one is the
    conditional model; in between, each example is guided exactly when its time is inside
    (Kynkäänniemi et al. 2024)."""
    cond = _exact_conditional(two.gmm, rf.process, "velocity")
    x, t, y = _batch(7, 64, *T_RANGE)
    plain = guidance.classifier_free(cond, y, NULL, 2.0)
    everywhere = guidance.classifier_free(cond, y, NULL, 2.0, interval=(0.0, 1.0))
    nowhere = guidance.classifier_free(cond, y, NULL, 2.0, interval=(0.0, 0.0))
    inside = guidance.classifier_free(cond, y, NULL, 2.0, interval=(0.3, 0.6))
    np.testing.assert_array_equal(everywhere(x, t), plain(x, t))
    np.testing.assert_allclose(nowhere(x, t), cond(x, t, y), rtol=1e-6, atol=1e-6)
    mask = ((t >= 0.3) & (t <= 0.6))[:, None]
    assert 0 < int(mask.sum()) < 64
    np.testing.assert_allclose(inside(x, t), jnp.where(mask, plain(x, t), cond(x, t, y)), rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(plain(x, t) - cond(x, t, y)))) > 0.1  # guidance does something
    with pytest.raises(ValueError, match="interval"):
        guidance.classifier_free(cond, y, NULL, 2.0, interval=(0.6, 0.3))


def test_autoguidance(two, rf):
    """`D + w (D - D_weak)`: with the weak model equal to the model it is the model at every
    weight; with an exact weak model of a wider mixture (stds x 2) at `w = 1` it is the
    extrapolation `2 D - D_weak` in every view (x0, velocity), also when the weak model is of
    another kind and on another process (converted, then combined); `w = 0` is the model."""
    model = dj.exact_model(two.gmm, rf.process, "velocity")
    wide = dj.GaussianMixture(two.gmm.weights, two.gmm.means, 2.0 * two.gmm.stds)
    weak = dj.exact_model(wide, dj.VPSDE(), "eps")
    x, t, _ = _batch(9, 64, *T_RANGE)
    same = guidance.autoguidance(model, model, 3.0)
    np.testing.assert_allclose(same(x, t), model(x, t), rtol=1e-5, atol=1e-5)
    guided = guidance.autoguidance(model, weak, 1.0)
    assert guided.prediction == "velocity"
    weak_rf = dj.exact_model(wide, rf.process, "x0")
    for view in ("x0", "velocity"):
        expected = 2 * model.predict(view, x, t) - weak_rf.predict(view, x, t)
        np.testing.assert_allclose(guided.predict(view, x, t), expected, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(
        guidance.autoguidance(model, weak, 0.0)(x, t), model(x, t), rtol=1e-6, atol=1e-6
    )


def test_guided_flow_matching_model_samples_the_class_conditional(two, rf):
    """End to end on the rectified-flow path: DPM-Solver on the classifier-free guided exact
    velocity model with `w = 0` (the conditional model itself) samples `p_0(x | y)`."""
    cond = _exact_conditional(two.gmm, rf.process, "velocity")
    model = guidance.classifier_free(cond, 1, NULL, 0.0)
    x, _ = samplers.dpm_solver(jax.random.key(8), model, (N, 2), num_steps=20)
    assert float(jnp.mean(two.posterior0(x)[:, 1] > 0.5)) >= 0.98
    assert float(energy_distance(x, two.cond[1])) < TOL


# ----------------------------------------------------------------------------- trained models


def _train(loss_fn, params, key, num_steps: int):
    """`num_steps` Adam steps in ONE compiled `lax.scan` (the loss draws its own batch), with
    XLA's optimisations on: the loop is run-time bound."""
    optimizer = optax.adam(optax.cosine_decay_schedule(2e-3, num_steps, 0.05))
    step = training.make_train_step(loss_fn, optimizer, donate=False)
    state = training.create_train_state(params, optimizer)
    run = jax.jit(lambda s, keys: jax.lax.scan(lambda c, k: (step(c, None, k)[0], None), s, keys))
    with optimizations(True):
        return run(state, jax.random.split(key, num_steps))[0].params


def _mlp(**kw):
    return nets.MLP(2, hidden=(128, 128, 128), time_scale=1000.0, rngs=nnx.Rngs(0), **kw)


def _batch_and_key(key, batch: int = 256):
    k_data, k_loss = jax.random.split(key)
    return data.two_class(k_data, batch), k_loss


def _train_classifier(vp) -> object:
    """A noise-conditional classifier trained from scratch on `data.two_class` (batch 256)."""
    capply, cparams = nets.split(
        nets.Classifier(2, 2, hidden=(128, 128), time_scale=1000.0, rngs=nnx.Rngs(1))
    )

    def classifier_loss(p, _, key):
        (x, y), k = _batch_and_key(key)
        return losses.classifier(p, capply, k, x, y, vp)

    cparams = _train(classifier_loss, cparams, jax.random.key(2), 1000)
    return lambda x, t: capply(cparams, x, t)


@pytest.fixture(scope="module")
def conditional(two) -> dj.Model:
    """A class-conditional eps MLP trained from scratch on `data.two_class` (batch 256) with
    label dropout 0.2 to the null label 2: the null label makes it an unconditional model too."""
    fapply, fparams = nets.split(_mlp(num_classes=2))

    def cfg_loss(p, _, key):
        (x, y), k = _batch_and_key(key)
        return losses.dsm(p, fapply, k, x, two.vp, labels=y, label_dropout=0.2, null_label=NULL)

    return dj.Model(fapply, two.vp, "eps", params=_train(cfg_loss, fparams, jax.random.key(3), 2000))


def test_trained_classifier_guidance(two, conditional):
    """Classifier guidance of the trained model at its null label (unconditional) with a
    trained noise-conditional classifier samples the class-conditional."""
    y = jnp.arange(1000) % 2
    log_prob = _train_classifier(two.vp)
    unconditional = dj.Model(
        lambda p, x, t: conditional.fn(p, x, t, jnp.full(x.shape[:1], NULL)),
        two.vp, "eps", params=conditional.params,
    )  # fmt: skip
    model = guidance.classifier_guidance(unconditional, log_prob, y, 1.0)
    x, _ = samplers.dpm_solver(jax.random.key(5), model, (1000, 2), num_steps=25)
    accuracy = float(jnp.mean(jnp.argmax(two.posterior0(x), axis=1) == y))
    assert accuracy >= 0.95  # measured 0.98 (unguided: 0.50)


def test_trained_classifier_free_guidance(two, conditional):
    y = jnp.arange(1000) % 2
    model = guidance.classifier_free(conditional, y, null_label=NULL, weight=1.0)
    x, _ = samplers.dpm_solver(jax.random.key(5), model, (1000, 2), num_steps=25)
    accuracy = float(jnp.mean(jnp.argmax(two.posterior0(x), axis=1) == y))
    assert accuracy >= 0.95  # measured 1.00 (w = 0, the conditional model alone: 0.98)


# ----------------------------------------------------------------------------- label dropout


def test_drop_labels_rate():
    labels = jnp.arange(20_000) % 3
    dropped = guidance.drop_labels(jax.random.key(0), labels, 0.25, 3)
    is_null = np.asarray(dropped == 3)
    # Binomial(20000, 0.25): std 0.0031 of the fraction; 5 sigma.
    assert abs(is_null.mean() - 0.25) < 0.016
    np.testing.assert_array_equal(np.asarray(dropped)[~is_null], np.asarray(labels)[~is_null])
    assert dropped.dtype == labels.dtype
    np.testing.assert_array_equal(guidance.drop_labels(jax.random.key(0), labels, 0.0, 3), labels)
    assert bool(jnp.all(guidance.drop_labels(jax.random.key(0), labels, 1.0, 3) == 3))


def test_loss_label_dropout(two):
    def apply(params, x, t, y):  # output depends on the label
        return params * x + y[:, None].astype(x.dtype)

    x, y = data.two_class(jax.random.key(0), 64)
    key = jax.random.key(1)
    for loss_fn, process in ((losses.dsm, two.vp), (losses.ddpm, two.sch)):
        plain = loss_fn(0.5, apply, key, x, process, labels=y)[0]
        none_dropped = loss_fn(0.5, apply, key, x, process, labels=y, label_dropout=0.0)[0]
        assert float(plain) == float(none_dropped)
        # With p = 1 every label becomes the null label: the loss no longer depends on `labels`.
        all_dropped = [
            loss_fn(0.5, apply, key, x, process, labels=lab, label_dropout=1.0, null_label=2)[0]
            for lab in (y, 1 - y)
        ]
        assert float(all_dropped[0]) == float(all_dropped[1]) != float(plain)


# ----------------------------------------------------------------------------- inpainting


# ----------------------------------------------------------------------------- inpainting


def _conditional(means, std, c):
    """Exact `p(x_2 | x_1 = c)` of an equal-weight isotropic mixture: the components' `x_2`
    Gaussians reweighted by `w_k N(c | m_k1, std^2)`."""
    means = jnp.asarray(means)
    post = jax.nn.softmax(-0.5 * ((c - means[:, 0]) / std) ** 2)
    return dj.GaussianMixture(post, means[:, 1:], jnp.full(means.shape[0], std))


def _inpaint(means, std, c, sampler, **kw):
    gmm = dj.GaussianMixture(jnp.full(len(means), 1 / len(means)), means, jnp.full(len(means), std))
    known, mask = jnp.array([c, 0.0]), jnp.array([True, False])
    if sampler in (samplers.ddim, samplers.ddpm):
        process = dj.schedules.linear(1000)
        model = dj.exact_model(gmm, process, "eps")
    else:
        process = dj.VPSDE()
        model = dj.exact_model(gmm, process, "score")
    projection = guidance.inpainting_projection(process, known, mask)
    x, _ = sampler(jax.random.key(0), model, (N, 2), projection=projection, **kw)
    np.testing.assert_array_equal(x[:, 0], np.float32(c))  # known values restored exactly
    ref = _conditional(means, std, c).sample(jax.random.key(1), N)
    return float(energy_distance(x[:, 1:], ref))


# The known coordinate identifies the component early (means 6 apart along x_1, 2 along x_2),
# and c = 2.5 is a typical value (one std from the mean 3): replacement is close to exact.
SEPARATED = ([[-3.0, -1.0], [3.0, 1.0]], 0.5, 2.5)
# Overlapping components, c between them: p(x_2 | x_1 = 0.3) weights the components 0.23 / 0.77.
OVERLAPPING = ([[-1.0, -1.0], [1.0, 1.0]], 0.7, 0.3)


@pytest.mark.parametrize(
    "sampler, kw, tol",
    [
        # measured 0.0022 (the unconditional x_2 is at 0.70; 1-D noise level 0.0003)
        pytest.param(samplers.reverse_sde, {"num_steps": 500}, 0.005, marks=pytest.mark.optimized),
        # measured 0.0000 (the Langevin corrector re-equilibrates x_2 given the known x_1)
        pytest.param(
            samplers.predictor_corrector, {"num_steps": 500}, 0.002, marks=pytest.mark.optimized
        ),
        # measured 0.0029 (ancestral DDIM, eta = 1)
        (samplers.ddim, {"num_steps": 250, "eta": 1.0}, 0.006),
        # measured 0.0046 (1000 ancestral steps)
        pytest.param(samplers.ddpm, {}, 0.009, marks=pytest.mark.optimized),
    ],
)
def test_inpainting_separated(sampler, kw, tol):
    """Replacement (Song et al. 2021, App. I.2) is approximate: the unknown coordinate follows
    the joint score at the re-noised known value, i.e. `p_t(x_2 | x_1,t)` rather than
    `p_t(x_2 | x_1,0 = c)`. Here the error is small but above the noise level; thresholds are
    about twice the measured energy distance. On the OVERLAPPING mixture, reverse_sde and DDIM
    leave 0.069 / 0.073 (the unconditional x_2 is at 0.166): the known value enters too late.
    """
    assert _inpaint(*SEPARATED, sampler, **kw) < tol


def test_inpainting_overlapping_predictor_corrector():
    """The corrector steps keep PC close to the exact conditional (measured 0.0047; reverse SDE
    0.069 and unconditional 0.166)."""
    assert _inpaint(*OVERLAPPING, samplers.predictor_corrector, num_steps=500) < 0.01


def test_projection_that_changes_nothing_keeps_the_samples(two):
    """The projected reverse SDE steps on the same grid and Brownian path as the plain solve."""
    kw = {"num_steps": 50}
    nothing = guidance.inpainting_projection(two.vp, jnp.zeros(2), jnp.zeros(2, bool))
    x, info = samplers.reverse_sde(jax.random.key(0), two.score, (64, 2), **kw)
    xp, info_p = samplers.reverse_sde(
        jax.random.key(0), two.score, (64, 2), projection=nothing, **kw
    )
    np.testing.assert_allclose(xp, x, atol=1e-4)
    assert int(info_p.nfe) == int(info.nfe)


def test_projection_save_times(two):
    projection = guidance.inpainting_projection(
        two.vp, jnp.array([0.7, 0.0]), jnp.array([True, False])
    )
    x, info = samplers.reverse_sde(
        jax.random.key(0), two.score, (64, 2), num_steps=50, save_times=[0.5],
        projection=projection,
    )  # fmt: skip
    np.testing.assert_allclose(info.times, [0.5], rtol=1e-5)
    assert info.trajectory.shape == (1, 64, 2)
    assert bool(jnp.all(x[:, 0] == 0.7))


# ----------------------------------------------------------------------------- bad input


def test_bad_input(two):
    score, clf, vp = two.score, two.clf_vp, two.vp
    cond = dj.Model(lambda x, t, y: x, vp, "eps")
    shape = (8, 2)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="scale"):
        guidance.classifier_guidance(score, clf, 0, -1.0)
    with pytest.raises(ValueError, match="scale"):
        guidance.classifier_guidance(score, clf, 0, float("nan"))
    with pytest.raises(TypeError, match="scale"):
        guidance.classifier_guidance(score, clf, 0, "1")
    with pytest.raises(TypeError, match="scale"):
        guidance.classifier_guidance(score, clf, 0, jnp.ones(2))
    with pytest.raises(ValueError, match="weight"):
        guidance.classifier_free(cond, 0, 2, -0.5)
    with pytest.raises(TypeError, match="integer"):
        guidance.classifier_guidance(score, clf, 0.5)
    with pytest.raises(TypeError, match="integer"):
        guidance.classifier_guidance(score, clf, jnp.zeros(8))
    with pytest.raises(ValueError, match="shape"):
        guidance.classifier_guidance(score, clf, jnp.zeros((8, 1), int))
    with pytest.raises(ValueError, match="`y` must be class labels >= 0"):
        guidance.classifier_guidance(score, clf, -1)
    with pytest.raises(ValueError, match=r"`y` must be class labels in \[0, 3\)"):
        guidance.classifier_free(dj.Model(lambda x, t, y: x, dj.VPSDE(), "eps"), 3, 2, 1.0)
    with pytest.raises(TypeError, match="log_prob_fn"):
        guidance.classifier_guidance(score, "classifier", 0)
    # Guidance takes a Model (any kind); a bare function or None is refused, naming it.
    with pytest.raises(TypeError, match="Model"):
        guidance.classifier_guidance(None, clf, 0)
    with pytest.raises(TypeError, match="Model"):
        guidance.classifier_guidance(lambda x, t: x, clf, 0)
    with pytest.raises(TypeError, match="Model"):
        guidance.classifier_free(lambda x, t, y: x, 0, 2)
    with pytest.raises(TypeError, match="null_label"):
        guidance.classifier_free(cond, 0, 2.0)
    # Labels that do not fit the batch or the classifier: caught before compiling.
    wrong_batch = guidance.classifier_guidance(score, clf, jnp.zeros(5, int))
    with pytest.raises(ValueError, match=r"\[B\] = \[8\]"):
        samplers.reverse_sde(key, wrong_batch, shape, num_steps=4)
    with pytest.raises(ValueError, match="class of the classifier"):
        samplers.reverse_sde(key, guidance.classifier_guidance(score, clf, 2), shape)
    bad_clf = guidance.classifier_guidance(score, lambda x, t: x[:, 0], 0)
    with pytest.raises(ValueError, match="num_classes"):
        samplers.reverse_sde(key, bad_clf, shape)
    # Label dropout.
    with pytest.raises(ValueError, match=r"[`']p[`']"):
        guidance.drop_labels(key, jnp.zeros(4, int), 1.5, 2)
    with pytest.raises(TypeError, match="integer"):
        guidance.drop_labels(key, jnp.zeros(4), 0.1, 2)
    x0, y0 = data.two_class(key, 8)
    with pytest.raises(ValueError, match="null_label"):
        losses.dsm(None, lambda p, x, t, y: x, key, x0, vp, labels=y0, label_dropout=0.1)
    with pytest.raises(ValueError, match="label_dropout"):
        losses.dsm(None, lambda p, x, t, y: x, key, x0, vp, labels=y0, label_dropout=2.0)
    # Inpainting.
    with pytest.raises(TypeError, match="boolean"):
        guidance.inpainting_projection(vp, jnp.zeros(2), jnp.array([1, 0]))
    with pytest.raises(ValueError, match="broadcast"):
        guidance.inpainting_projection(vp, jnp.zeros(2), jnp.ones(3, bool))
    with pytest.raises(TypeError, match="process"):
        guidance.inpainting_projection("vp", jnp.zeros(2), jnp.ones(2, bool))
    too_many = guidance.inpainting_projection(vp, jnp.zeros((5, 2)), jnp.ones(2, bool))
    with pytest.raises(ValueError, match="projection"):
        samplers.reverse_sde(key, score, shape, projection=too_many)
    with pytest.raises(TypeError, match="projection"):
        samplers.predictor_corrector(key, score, shape, projection="replace")
    with pytest.raises(TypeError, match="projection"):
        samplers.ddim(key, two.eps_sch, shape, projection=1.0)
    ok = guidance.inpainting_projection(vp, jnp.zeros(2), jnp.ones(2, bool))
    adaptive = diffrax.PIDController(rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="fixed steps"):
        samplers.reverse_sde(key, score, shape, stepsize_controller=adaptive, projection=ok)
