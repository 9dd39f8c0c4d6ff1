"""The bad-input sweep (issue 14): one table per public module, run by `badinput.table_test`.

Every row is a bad call that must raise a `TypeError` / `ValueError` naming the argument before
anything compiles (or, for a traced value, `eqx.error_if`'s run-time error naming it), with and
without the signature checker. Shapes are tiny and the models are the exact ones of
`diffjax.distributions`, built once here.
"""

from __future__ import annotations

import os
import tempfile

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from badinput import Row, table_test

import diffjax as dj
from diffjax import samplers

KEY = jax.random.key(0)
SHAPE = (4, 2)
X = jnp.zeros(SHAPE)
NAN, INF = float("nan"), float("inf")
GMM = dj.gaussian(jnp.zeros(2), 1.0)
VP, EDM, RF = dj.VPSDE(), dj.EDM(), dj.RectifiedFlow()
SCH = dj.schedules.linear(10)
SCORE = dj.exact_model(GMM, VP, "score")  # continuous
EPS = dj.exact_model(GMM, SCH, "eps")  # discrete
COMPLEX = dj.Model(lambda x, t: x.astype(jnp.complex64), VP, "eps")
WIDE = dj.Model(lambda x, t: jnp.zeros((x.shape[0], 3)), VP, "eps")
BROKEN = dj.Model(lambda x, t: x @ jnp.ones((3, 3)), VP, "eps")
APPLY = lambda params, x, t, *labels: x  # noqa: E731
CLASSIFY = lambda params, x, t: jnp.zeros((x.shape[0], 3))  # noqa: E731


def _jit(fn):
    """`fn(value)` under `jax.jit`: the argument is traced."""
    return jax.jit(fn)


# ----------------------------------------------------------------------------- processes
PROCESSES = [
    Row("vp-beta_min-str", lambda: dj.VPSDE(beta_min="a"), "beta_min", "type"),
    Row("vp-beta_min-none", lambda: dj.VPSDE(beta_min=None), "beta_min", "type"),
    Row("vp-beta_min-vector", lambda: dj.VPSDE(beta_min=np.ones(2)), "beta_min", "type"),
    Row("vp-beta_min-neg", lambda: dj.VPSDE(beta_min=-1.0), "beta_min", "range"),
    Row("vp-beta_min-nan", lambda: dj.VPSDE(beta_min=NAN), "beta_min", "nonfinite"),
    Row("vp-beta_max-inf", lambda: dj.VPSDE(beta_max=INF), "beta_max", "nonfinite"),
    Row("vp-beta-order", lambda: dj.VPSDE(beta_min=30.0), "beta_min", "range"),
    Row("vp-T-zero", lambda: dj.VPSDE(T=0.0), "T", "range"),
    Row("subvp-beta_max-complex", lambda: dj.SubVPSDE(beta_max=1j), "beta_max", "type"),
    Row("ve-sigma_min-zero", lambda: dj.VESDE(sigma_min=0.0), "sigma_min", "range"),
    Row("ve-sigma-order", lambda: dj.VESDE(sigma_min=60.0), "sigma_min", "range"),
    Row("edm-sigma_max-str", lambda: dj.EDM(sigma_max="80"), "sigma_max", "type"),
    Row("edm-sigma_min-nan", lambda: dj.EDM(sigma_min=NAN), "sigma_min", "nonfinite"),
    Row("prior_sample-key-str", lambda: VP.prior_sample("key", SHAPE), "key", "key"),
    Row("prior_sample-key-none", lambda: VP.prior_sample(None, SHAPE), "key", "key"),
    Row("prior_sample-key-float", lambda: VP.prior_sample(jnp.zeros(2), SHAPE), "key", "key"),
    Row("prior_sample-key-batch", lambda: VP.prior_sample(jax.random.split(KEY), SHAPE), "key", "shape", ValueError),
    Row("prior_sample-shape-negative", lambda: VP.prior_sample(KEY, (-1, 2)), "shape", "range"),
    Row("prior_sample-shape-float", lambda: VP.prior_sample(KEY, (4.0, 2)), "shape", "integer"),
    Row("prior_sample-shape-none", lambda: VP.prior_sample(KEY, None), "shape", "type"),
    Row("prior_sample-shape-str", lambda: VP.prior_sample(KEY, "ab"), "shape", "type"),
    Row("prior_log_prob-z-str", lambda: VP.prior_log_prob("z"), "z", "type"),
    Row("prior_log_prob-z-none", lambda: VP.prior_log_prob(None), "z", "type"),
    Row("prior_log_prob-z-scalar", lambda: VP.prior_log_prob(1.0), "z", "shape"),
    Row("marginal-t-str", lambda: VP.marginal("t"), "t", "type"),
    Row("marginal-t-none", lambda: EDM.marginal(None), "t", "type"),
    Row("marginal-t-complex", lambda: RF.marginal(1j), "t", "type"),
    Row("log_snr-t-str", lambda: VP.log_snr("t"), "t", "type"),
    Row("t_from_log_snr-str", lambda: VP.t_from_log_snr("a"), "log_snr", "type"),
    Row("t_from_log_snr-none", lambda: dj.Cosine().t_from_log_snr(None), "log_snr", "type"),
    Row("drift-t-str", lambda: VP.drift(X, "t"), "t", "type"),
    Row("diffusion-t-none", lambda: VP.diffusion(None), "t", "type"),
    Row("from_ddpm-float", lambda: dj.VPSDE.from_ddpm(10.0), "num_steps", "integer"),
    Row("from_ddpm-str", lambda: dj.VPSDE.from_ddpm("10"), "num_steps", "type"),
    Row("to_ddpm-too-few", lambda: VP.to_ddpm(10), "num_steps", "range"),
    Row("to_ddpm-zero", lambda: VP.to_ddpm(0), "num_steps", "range"),
]
test_processes = table_test(PROCESSES)

# ----------------------------------------------------------------------------- schedules
SCHEDULES = [
    Row("linear-num_steps-zero", lambda: dj.schedules.linear(0), "num_steps", "range"),
    Row("linear-num_steps-float", lambda: dj.schedules.linear(10.0), "num_steps", "integer"),
    Row("linear-num_steps-str", lambda: dj.schedules.linear("10"), "num_steps", "type"),
    Row("linear-beta_start-neg", lambda: dj.schedules.linear(10, -1e-4), "beta_start", "range"),
    Row("linear-beta_end-nan", lambda: dj.schedules.linear(10, beta_end=NAN), "beta_end", "nonfinite"),
    Row("linear-beta_end-none", lambda: dj.schedules.linear(10, beta_end=None), "beta_end", "type"),
    Row("linear-beta-order", lambda: dj.schedules.linear(10, 0.5, 0.1), "beta_start", "range"),
    Row("constant-beta-one", lambda: dj.schedules.constant(10, 1.0), "beta", "range"),
    Row("constant-beta-str", lambda: dj.schedules.constant(10, "0.1"), "beta", "type"),
    Row("cosine-s-neg", lambda: dj.schedules.cosine(10, s=-1.0), "s", "range"),
    Row("cosine-s-str", lambda: dj.schedules.cosine(10, s="a"), "s", "type"),
    Row("cosine-s-nan", lambda: dj.schedules.cosine(10, s=NAN), "s", "nonfinite"),
    Row("cosine-max_beta-big", lambda: dj.schedules.cosine(10, max_beta=1.5), "max_beta", "range"),
    Row("from_betas-range", lambda: dj.schedules.from_betas([0.5, 1.5]), "betas", "range"),
    Row("from_betas-nan", lambda: dj.schedules.from_betas([0.1, NAN]), "betas", "nonfinite"),
    Row("from_betas-str", lambda: dj.schedules.from_betas("abc"), "betas", "type"),
    Row("from_betas-none", lambda: dj.schedules.from_betas(None), "betas", "type"),
    Row("from_betas-matrix", lambda: dj.schedules.from_betas([[0.1]]), "betas", "shape"),
    Row("from_betas-empty", lambda: dj.schedules.from_betas([]), "betas", "shape"),
    Row("check_time-float", lambda: SCH.check_time(0.5), "t", "type"),
    Row("check_time-str", lambda: SCH.check_time("1"), "t", "type"),
    Row("check_time-range", lambda: SCH.check_time(11), "t", "range"),
    Row("marginal-negative", lambda: SCH.marginal(jnp.array([-1, 2])), "t", "range"),
]
test_schedules = table_test(SCHEDULES)

# ----------------------------------------------------------------------------- model
MODEL = [
    Row("Model-fn-str", lambda: dj.Model("fn", VP, "eps"), "fn", "type"),
    Row("Model-fn-none", lambda: dj.Model(None, VP, "eps"), "fn", "type"),
    Row("Model-process-str", lambda: dj.Model(APPLY, "vp", "eps"), "process", "type"),
    Row("Model-process-none", lambda: dj.Model(APPLY, None, "eps"), "process", "type"),
    Row("Model-prediction-bad", lambda: dj.Model(APPLY, VP, "noise"), "prediction", "range"),
    Row("Model-prediction-none", lambda: dj.Model(APPLY, VP, None), "prediction", "type"),
    Row("Model-velocity-schedule", lambda: dj.Model(APPLY, SCH, "velocity"), "prediction", "range"),
    Row("Model-time_map-int", lambda: dj.Model(APPLY, VP, "eps", time_map=3), "time_map", "type"),
    Row("call-x-str", lambda: SCORE("x", 0.5), "x", "type"),
    Row("call-x-none", lambda: SCORE(None, 0.5), "x", "type"),
    Row("call-t-str", lambda: SCORE(X, "t"), "t", "type"),
    Row("call-t-shape", lambda: SCORE(X, jnp.zeros(3)), "t", "shape"),
    Row("predict-kind-bad", lambda: SCORE.predict("noise", X, 0.5), "kind", "range"),
    Row("predict-velocity-schedule", lambda: EPS.predict("velocity", X, 1), "kind", "range"),
    Row("eps-x-complex", lambda: SCORE.eps(X.astype(jnp.complex64), 0.5), "x", "dtype"),
    Row("x0-t-str", lambda: SCORE.x0(X, "t"), "t", "type"),
    Row("on-str", lambda: SCORE.on("vp"), "process", "type"),
    Row("on-schedule", lambda: SCORE.on(SCH), "process", "type"),
    Row("edm_model-net-str", lambda: dj.edm_model("net", EDM), "net", "type"),
    Row("edm_model-process-schedule", lambda: dj.edm_model(APPLY, SCH), "process", "type"),
    Row("edm_model-sigma_data-zero", lambda: dj.edm_model(APPLY, EDM, sigma_data=0.0), "sigma_data", "range"),
    Row("edm_model-sigma_data-nan", lambda: dj.edm_model(APPLY, EDM, sigma_data=NAN), "sigma_data", "nonfinite"),
    Row("edm_model-sigma_data-str", lambda: dj.edm_model(APPLY, EDM, sigma_data="a"), "sigma_data", "type"),
]
test_model = table_test(MODEL)

# ----------------------------------------------------------------------------- forward
FORWARD = [
    Row("q_sample-process-str", lambda: dj.q_sample("vp", X, 0.5, X), "process", "type"),
    Row("q_sample-x0-str", lambda: dj.q_sample(VP, "x0", 0.5, X), "x0", "type"),
    Row("q_sample-x0-none", lambda: dj.q_sample(VP, None, 0.5, X), "x0", "type"),
    Row("q_sample-x0-scalar", lambda: dj.q_sample(VP, 0.0, 0.5, 0.0), "x", "shape"),
    Row("q_sample-noise-none", lambda: dj.q_sample(VP, X, 0.5, None), "noise", "type"),
    Row("q_sample-noise-shape", lambda: dj.q_sample(VP, X, 0.5, jnp.zeros((3, 2))), "noise", "shape"),
    Row("q_sample-t-range", lambda: dj.q_sample(VP, X, 2.0, X), "t", "range"),
    Row("q_sample-t-nan", lambda: dj.q_sample(VP, X, NAN, X), "t", "nonfinite"),
    Row("q_sample-t-str", lambda: dj.q_sample(VP, X, "t", X), "t", "type"),
    Row("q_sample-t-shape", lambda: dj.q_sample(VP, X, jnp.zeros(3), X), "t", "shape"),
    Row("q_sample-schedule-float-t", lambda: dj.q_sample(SCH, X, 0.5, X), "t", "type"),
    Row("q_sample-schedule-t-range", lambda: dj.q_sample(SCH, X, 11, X), "t", "range"),
    Row("q_posterior-schedule-vp", lambda: dj.q_posterior(VP, X, X, 1), "schedule", "type"),
    Row("q_posterior-t-zero", lambda: dj.q_posterior(SCH, X, X, 0), "t", "range"),
    Row("q_sample-schedule-t-traced", lambda: _jit(lambda t: dj.q_sample(SCH, X, t, X))(11), "t", "traced"),
    Row("q_sample-schedule-t-traced-neg", lambda: _jit(lambda t: dj.q_sample(SCH, X, t, X))(-1), "t", "traced"),
    Row("q_posterior-t-traced-zero", lambda: _jit(lambda t: dj.q_posterior(SCH, X, X, t))(0), "t", "traced"),
    Row("q_posterior-x_t-shape", lambda: dj.q_posterior(SCH, X, jnp.zeros((3, 2)), 1), "x_t", "shape"),
    Row("q_posterior-x0-str", lambda: dj.q_posterior(SCH, "x", X, 1), "x0", "type"),
]
test_forward = table_test(FORWARD)

# ----------------------------------------------------------------------------- distributions
MEANS = np.zeros((1, 2))
DISTRIBUTIONS = [
    Row("gmm-weights-sum", lambda: dj.GaussianMixture([0.5, 0.6], np.zeros((2, 2)), [1.0, 1.0]), "weights", "range"),
    Row("gmm-weights-nan", lambda: dj.GaussianMixture([NAN], MEANS, [1.0]), "weights", "nonfinite"),
    Row("gmm-weights-str", lambda: dj.GaussianMixture("w", MEANS, [1.0]), "weights", "type"),
    Row("gmm-weights-none", lambda: dj.GaussianMixture(None, MEANS, [1.0]), "weights", "type"),
    Row("gmm-means-shape", lambda: dj.GaussianMixture([1.0], [0.0], [1.0]), "means", "shape"),
    Row("gmm-means-nan", lambda: dj.GaussianMixture([1.0], [[NAN, 0.0]], [1.0]), "means", "nonfinite"),
    Row("gmm-stds-neg", lambda: dj.GaussianMixture([1.0], MEANS, [-1.0]), "stds", "range"),
    Row("gmm-stds-inf", lambda: dj.GaussianMixture([1.0], MEANS, [INF]), "stds", "nonfinite"),
    Row("gmm-stds-shape", lambda: dj.GaussianMixture([1.0], MEANS, [[1.0, 1.0, 1.0]]), "stds", "shape"),
    Row("gaussian-mean-str", lambda: dj.gaussian("m", 1.0), "mean", "type"),
    Row("gaussian-std-shape", lambda: dj.gaussian(jnp.zeros(2), jnp.ones(3)), "std", "shape"),
    Row("gaussian-std-zero", lambda: dj.gaussian(jnp.zeros(2), 0.0), "stds", "range"),
    Row("sample-key-str", lambda: GMM.sample("key", 4), "key", "key"),
    Row("sample-n-zero", lambda: GMM.sample(KEY, 0), "n", "range"),
    Row("sample-n-float", lambda: GMM.sample(KEY, 2.5), "n", "integer"),
    Row("log_prob-x-event", lambda: GMM.log_prob(jnp.zeros((4, 3))), "x", "shape"),
    Row("log_prob-x-str", lambda: GMM.log_prob("x"), "x", "type"),
    Row("log_prob-process-str", lambda: GMM.log_prob(X, "vp", 0.5), "process", "type"),
    Row("log_prob-t-shape", lambda: GMM.log_prob(X, VP, jnp.zeros(3)), "t", "shape"),
    Row("score-t-str", lambda: GMM.score(X, VP, "t"), "t", "type"),
    Row("posterior_mean-t-schedule-float", lambda: GMM.posterior_mean(X, SCH, 0.5), "t", "type"),
    Row("subset-range", lambda: GMM.subset([5]), "components", "range"),
    Row("subset-float", lambda: GMM.subset([0.5]), "components", "integer"),
    Row("noised-t-vector", lambda: GMM.noised(VP, jnp.zeros(2)), "t", "shape"),
    Row("noised-process-str", lambda: GMM.noised("vp", 0.5), "process", "type"),
    Row("exact_model-dist-str", lambda: dj.exact_model("gmm", VP), "dist", "type"),
    Row("exact_model-process-none", lambda: dj.exact_model(GMM, None), "process", "type"),
    Row("exact_model-prediction-bad", lambda: dj.exact_model(GMM, VP, "noise"), "prediction", "range"),
    Row("exact_classifier-classes-shape", lambda: dj.distributions.exact_classifier(GMM, VP, [0, 1]), "classes", "shape"),
    Row("exact_classifier-classes-neg", lambda: dj.distributions.exact_classifier(GMM, VP, [-1]), "classes", "range"),
    Row("exact_classifier-classes-float", lambda: dj.distributions.exact_classifier(GMM, VP, [0.5]), "classes", "integer"),
]
test_distributions = table_test(DISTRIBUTIONS)

# ----------------------------------------------------------------------------- losses
L = dj.losses
LOSSES = [
    # dsm
    Row("dsm-key-str", lambda: L.dsm(None, APPLY, "key", X, VP), "key", "key"),
    Row("dsm-key-none", lambda: L.dsm(None, APPLY, None, X, VP), "key", "key"),
    Row("dsm-apply_fn-str", lambda: L.dsm(None, "f", KEY, X, VP), "apply_fn", "type"),
    Row("dsm-apply_fn-shape", lambda: L.dsm(None, CLASSIFY, KEY, X, VP), "apply_fn", "shape"),
    Row("dsm-x0-str", lambda: L.dsm(None, APPLY, KEY, "x", VP), "x0", "type"),
    Row("dsm-x0-none", lambda: L.dsm(None, APPLY, KEY, None, VP), "x0", "type"),
    Row("dsm-x0-empty-batch", lambda: L.dsm(None, APPLY, KEY, jnp.zeros((0, 2)), VP), "x0", "shape"),
    Row("dsm-x0-complex", lambda: L.dsm(None, APPLY, KEY, X.astype(jnp.complex64), VP), "x0", "dtype"),
    Row("dsm-process-schedule", lambda: L.dsm(None, APPLY, KEY, X, SCH), "process", "type"),
    Row("dsm-prediction-bad", lambda: L.dsm(None, APPLY, KEY, X, VP, prediction="noise"), "prediction", "range"),
    Row("dsm-weighting-bad", lambda: L.dsm(None, APPLY, KEY, X, VP, weighting="uniform"), "weighting", "range"),
    Row("dsm-t_eps-zero", lambda: L.dsm(None, APPLY, KEY, X, VP, t_eps=0.0), "t_eps", "range"),
    Row("dsm-t_eps-nan", lambda: L.dsm(None, APPLY, KEY, X, VP, t_eps=NAN), "t_eps", "nonfinite"),
    Row("dsm-t_eps-str", lambda: L.dsm(None, APPLY, KEY, X, VP, t_eps="a"), "t_eps", "type"),
    Row("dsm-snr_gamma-zero", lambda: L.dsm(None, APPLY, KEY, X, VP, snr_gamma=0.0), "snr_gamma", "range"),
    Row("dsm-snr_gamma-str", lambda: L.dsm(None, APPLY, KEY, X, VP, snr_gamma="a"), "snr_gamma", "type"),
    Row("dsm-snr_gamma-inf", lambda: L.dsm(None, APPLY, KEY, X, VP, snr_gamma=INF), "snr_gamma", "nonfinite"),
    Row("dsm-importance-simple", lambda: L.dsm(None, APPLY, KEY, X, VP, importance_sampling=True), "importance_sampling", "range"),
    Row("dsm-labels-float", lambda: L.dsm(None, APPLY, KEY, X, VP, labels=jnp.zeros(4)), "labels", "type"),
    Row("dsm-labels-batch", lambda: L.dsm(None, APPLY, KEY, X, VP, labels=jnp.zeros(3, int)), "labels", "shape"),
    Row("dsm-labels-null", lambda: L.dsm(None, APPLY, KEY, X, VP, labels=jnp.full(4, 5), null_label=3), "labels", "range"),
    Row("dsm-null_label-str", lambda: L.dsm(None, APPLY, KEY, X, VP, labels=jnp.zeros(4, int), null_label="3"), "null_label", "type"),
    Row("dsm-null_label-neg", lambda: L.dsm(None, APPLY, KEY, X, VP, labels=jnp.zeros(4, int), null_label=-1), "null_label", "range"),
    Row("dsm-label_dropout-range", lambda: L.dsm(None, APPLY, KEY, X, VP, label_dropout=2.0), "label_dropout", "range"),
    Row("dsm-label_dropout-str", lambda: L.dsm(None, APPLY, KEY, X, VP, label_dropout="a"), "label_dropout", "type"),
    Row("dsm-label_dropout-nan", lambda: L.dsm(None, APPLY, KEY, X, VP, label_dropout=NAN), "label_dropout", "nonfinite"),
    Row("dsm-label_dropout-no-labels", lambda: L.dsm(None, APPLY, KEY, X, VP, label_dropout=0.5), "label_dropout", "range"),
    Row("dsm-t_eps-traced", lambda: _jit(lambda e: L.dsm(None, APPLY, KEY, X, VP, t_eps=e)[0])(0.0), "t_eps", "traced"),
    # flow_matching
    Row("fm-process-schedule", lambda: L.flow_matching(None, APPLY, KEY, X, SCH), "process", "type"),
    Row("fm-time_sampling-bad", lambda: L.flow_matching(None, APPLY, KEY, X, time_sampling="beta"), "time_sampling", "range"),
    Row("fm-logit_std-zero", lambda: L.flow_matching(None, APPLY, KEY, X, logit_std=0.0), "logit_std", "range"),
    Row("fm-logit_mean-nan", lambda: L.flow_matching(None, APPLY, KEY, X, logit_mean=NAN), "logit_mean", "nonfinite"),
    Row("fm-t_eps-big", lambda: L.flow_matching(None, APPLY, KEY, X, t_eps=1.0), "t_eps", "range"),
    Row("fm-x0-none", lambda: L.flow_matching(None, APPLY, KEY, None), "x0", "type"),
    Row("fm-key-int", lambda: L.flow_matching(None, APPLY, 0, X), "key", "key"),
    # edm
    Row("edm-net-none", lambda: L.edm(None, None, KEY, X), "net", "type"),
    Row("edm-process-str", lambda: L.edm(None, APPLY, KEY, X, "edm"), "process", "type"),
    Row("edm-sigma_data-neg", lambda: L.edm(None, APPLY, KEY, X, sigma_data=-0.5), "sigma_data", "range"),
    Row("edm-p_std-zero", lambda: L.edm(None, APPLY, KEY, X, p_std=0.0), "p_std", "range"),
    Row("edm-p_mean-str", lambda: L.edm(None, APPLY, KEY, X, p_mean="a"), "p_mean", "type"),
    Row("edm-net-shape", lambda: L.edm(None, CLASSIFY, KEY, X), "net", "shape"),
    Row("edm-x0-empty-batch", lambda: L.edm(None, APPLY, KEY, jnp.zeros((0, 2))), "x0", "shape"),
    # ddpm
    Row("ddpm-schedule-vp", lambda: L.ddpm(None, APPLY, KEY, X, VP), "schedule", "type"),
    Row("ddpm-prediction-velocity", lambda: L.ddpm(None, APPLY, KEY, X, SCH, prediction="velocity"), "prediction", "range"),
    Row("ddpm-x0-str", lambda: L.ddpm(None, APPLY, KEY, "x", SCH), "x0", "type"),
    Row("ddpm-apply_fn-shape", lambda: L.ddpm(None, CLASSIFY, KEY, X, SCH), "apply_fn", "shape"),
    Row("ddpm-labels-float", lambda: L.ddpm(None, APPLY, KEY, X, SCH, labels=jnp.zeros(4)), "labels", "type"),
    # ddpm_vlb
    Row("ddpm_vlb-model-continuous", lambda: L.ddpm_vlb(SCORE, KEY, X), "model", "type"),
    Row("ddpm_vlb-model-str", lambda: L.ddpm_vlb("m", KEY, X), "model", "type"),
    Row("ddpm_vlb-x0-empty-batch", lambda: L.ddpm_vlb(EPS, KEY, jnp.zeros((0, 2))), "x0", "shape"),
    Row("ddpm_vlb-x0-event", lambda: L.ddpm_vlb(EPS, KEY, jnp.zeros((4, 3))), "model", "shape"),
    Row("ddpm_vlb-chunk_size-zero", lambda: L.ddpm_vlb(EPS, KEY, X, chunk_size=0), "chunk_size", "range"),
    Row("ddpm_vlb-chunk_size-float", lambda: L.ddpm_vlb(EPS, KEY, X, chunk_size=2.0), "chunk_size", "integer"),
    Row("ddpm_vlb-key-str", lambda: L.ddpm_vlb(EPS, "key", X), "key", "key"),
    # classifier
    Row("classifier-labels-none", lambda: L.classifier(None, CLASSIFY, KEY, X, None, VP), "labels", "type"),
    Row("classifier-labels-float", lambda: L.classifier(None, CLASSIFY, KEY, X, jnp.zeros(4), VP), "labels", "type"),
    Row("classifier-labels-batch", lambda: L.classifier(None, CLASSIFY, KEY, X, jnp.zeros(3, int), VP), "labels", "shape"),
    Row("classifier-labels-range", lambda: L.classifier(None, CLASSIFY, KEY, X, jnp.full(4, 3), VP), "labels", "range"),
    Row("classifier-process-str", lambda: L.classifier(None, CLASSIFY, KEY, X, jnp.zeros(4, int), "vp"), "process", "type"),
    Row("classifier-apply_fn-shape", lambda: L.classifier(None, lambda p, x, t: x[:, 0], KEY, X, jnp.zeros(4, int), VP), "apply_fn", "shape"),
    Row("classifier-t_eps-nan", lambda: L.classifier(None, CLASSIFY, KEY, X, jnp.zeros(4, int), VP, t_eps=NAN), "t_eps", "nonfinite"),
    # vae_elbo
    Row("vae-vae_apply-str", lambda: L.vae_elbo(None, "ab", KEY, X), "vae_apply", "type"),
    Row("vae-encode-none", lambda: L.vae_elbo(None, (None, APPLY), KEY, X), "encode", "type"),
    Row("vae-obs_std-nan", lambda: L.vae_elbo(None, L.VAEApply(lambda p, x: (x, x), lambda p, z: z), KEY, X, obs_std=NAN), "obs_std", "nonfinite"),
    Row("vae-obs_std-str", lambda: L.vae_elbo(None, L.VAEApply(lambda p, x: (x, x), lambda p, z: z), KEY, X, obs_std="a"), "obs_std", "type"),
    Row("vae-obs_std-shape", lambda: L.vae_elbo(None, L.VAEApply(lambda p, x: (x, x), lambda p, z: z), KEY, X, obs_std=jnp.ones(3)), "obs_std", "shape"),
    Row("vae-encode-shape", lambda: L.vae_elbo(None, L.VAEApply(lambda p, x: x, lambda p, z: z), KEY, X), "encode", "type"),
    Row("vae-decode-shape", lambda: L.vae_elbo(None, L.VAEApply(lambda p, x: (x, x), lambda p, z: z[:, :1]), KEY, X), "decode", "shape"),
    Row("vae-x-empty-batch", lambda: L.vae_elbo(None, L.VAEApply(lambda p, x: (x, x), lambda p, z: z), KEY, jnp.zeros((0, 2))), "x", "shape"),
]
test_losses = table_test(LOSSES)


# ----------------------------------------------------------------------------- samplers
def _sampler(fn, model, **defaults):
    """`fn(key, model, shape, **kwargs)` with the table's defaults, any argument overridable."""

    def call(key=KEY, model=model, shape=SHAPE, **kwargs):
        return fn(key, model, shape, **{**defaults, **kwargs})

    return call


CONTINUOUS = {
    "ddim": _sampler(samplers.ddim, SCORE, num_steps=2),
    "dpm_solver": _sampler(samplers.dpm_solver, SCORE, num_steps=2),
    "dpm_solver_sde": _sampler(samplers.dpm_solver, SCORE, num_steps=2, stochastic=True),
    "unipc": _sampler(samplers.unipc, SCORE, num_steps=2),
    "heun": _sampler(samplers.heun, SCORE, num_steps=2),
    "euler": _sampler(samplers.euler, SCORE, num_steps=2),
    "reverse_sde": _sampler(samplers.reverse_sde, SCORE, num_steps=2),
    "predictor_corrector": _sampler(samplers.predictor_corrector, SCORE, num_steps=2),
    "probability_flow": _sampler(samplers.probability_flow, SCORE, num_steps=2),
}
DISCRETE = {
    "ddpm": _sampler(samplers.ddpm, EPS),
    "ddim_discrete": _sampler(samplers.ddim, EPS, num_steps=2),
}


def _common_rows(name, run, *, continuous):
    """The rows every sampler shares: key, shape, model and (continuous) the time options."""
    rows = [
        Row(f"{name}-key-str", lambda: run(key="key"), "key", "key"),
        Row(f"{name}-key-none", lambda: run(key=None), "key", "key"),
        Row(f"{name}-key-float", lambda: run(key=jnp.zeros(2)), "key", "key"),
        Row(f"{name}-shape-negative", lambda: run(shape=(-1, 2)), "shape", "range"),
        Row(f"{name}-shape-empty-batch", lambda: run(shape=(0, 2)), "shape", "range"),
        Row(f"{name}-shape-float", lambda: run(shape=(4.0, 2)), "shape", "integer"),
        Row(f"{name}-shape-none", lambda: run(shape=None), "shape", "type"),
        Row(f"{name}-shape-no-event", lambda: run(shape=(4,)), "shape", "shape"),
        Row(f"{name}-model-str", lambda: run(model="model"), "model", "type"),
        Row(f"{name}-model-none", lambda: run(model=None), "model", "type"),
        Row(f"{name}-model-complex", lambda: run(model=COMPLEX if continuous else dj.Model(COMPLEX.fn, SCH, "eps")), "model", "dtype"),
        Row(f"{name}-model-wide", lambda: run(model=WIDE if continuous else dj.Model(WIDE.fn, SCH, "eps")), "model", "shape"),
        Row(f"{name}-model-broken", lambda: run(model=BROKEN if continuous else dj.Model(BROKEN.fn, SCH, "eps")), "model", "shape"),
    ]
    if not continuous:
        return rows
    return rows + [
        Row(f"{name}-num_steps-zero", lambda: run(num_steps=0), "num_steps", "range"),
        Row(f"{name}-num_steps-float", lambda: run(num_steps=2.0), "num_steps", "integer"),
        Row(f"{name}-num_steps-str", lambda: run(num_steps="2"), "num_steps", "type"),
        Row(f"{name}-grid-bad", lambda: run(grid="linear"), "grid", "range"),
        Row(f"{name}-rho-zero", lambda: run(rho=0.0), "rho", "range"),
        Row(f"{name}-rho-nan", lambda: run(rho=NAN), "rho", "nonfinite"),
        Row(f"{name}-t_eps-zero", lambda: run(t_eps=0.0), "t_eps", "range"),
        Row(f"{name}-t_eps-nan", lambda: run(t_eps=NAN), "t_eps", "nonfinite"),
        Row(f"{name}-t_eps-str", lambda: run(t_eps="a"), "t_eps", "type"),
        Row(f"{name}-t_eps-vector", lambda: run(t_eps=jnp.full(2, 0.1)), "t_eps", "type"),
        Row(f"{name}-t_max-big", lambda: run(t_max=2.0), "t_max", "range"),
        Row(f"{name}-t_eps-above-t_max", lambda: run(t_eps=0.5, t_max=0.4), "t_eps", "range"),
        Row(f"{name}-process-str", lambda: run(process="vp"), "process", "type"),
        Row(f"{name}-process-schedule", lambda: run(process=SCH), "process", "type"),
        Row(f"{name}-save_times-range", lambda: run(save_times=[5.0]), "save_times", "range"),
        Row(f"{name}-save_times-str", lambda: run(save_times="a"), "save_times", "type"),
        Row(f"{name}-save_times-nan", lambda: run(save_times=[NAN]), "save_times", "nonfinite"),
    ]


def _projection_rows(name, run):
    return [
        Row(f"{name}-projection-str", lambda: run(projection="p"), "projection", "type"),
        Row(f"{name}-projection-shape", lambda: run(projection=lambda k, x, t: x[:, :1]), "projection", "shape"),
    ]


SDE = CONTINUOUS["reverse_sde"]
PF = CONTINUOUS["probability_flow"]
PID = dfx.PIDController(rtol=1e-3, atol=1e-3)
SAMPLERS = [
    *(row for name, run in CONTINUOUS.items() for row in _common_rows(name, run, continuous=True)),
    *(row for name, run in DISCRETE.items() for row in _common_rows(name, run, continuous=False)),
    *(Row(f"{name}-model-kind", lambda run=run: run(model=EPS), "model", "type") for name, run in CONTINUOUS.items() if name != "ddim"),
    Row("ddpm-model-kind", lambda: DISCRETE["ddpm"](model=SCORE), "model", "type"),
    *_projection_rows("ddpm", DISCRETE["ddpm"]),
    *_projection_rows("ddim", CONTINUOUS["ddim"]),
    *_projection_rows("reverse_sde", SDE),
    *_projection_rows("predictor_corrector", CONTINUOUS["predictor_corrector"]),
    Row("ddpm-variance-bad", lambda: DISCRETE["ddpm"](variance="sigma"), "variance", "range"),
    Row("ddpm-save_times-float", lambda: DISCRETE["ddpm"](save_times=[0.5]), "save_times", "type"),
    Row("ddpm-save_times-range", lambda: DISCRETE["ddpm"](save_times=[11]), "save_times", "range"),
    Row("ddim_discrete-num_steps-big", lambda: DISCRETE["ddim_discrete"](num_steps=11), "num_steps", "range"),
    Row("ddim_discrete-grid-bad", lambda: DISCRETE["ddim_discrete"](grid="logsnr"), "grid", "range"),
    Row("ddim-eta-big", lambda: CONTINUOUS["ddim"](eta=2.0), "eta", "range"),
    Row("ddim-eta-nan", lambda: CONTINUOUS["ddim"](eta=NAN), "eta", "nonfinite"),
    Row("ddim-eta-str", lambda: CONTINUOUS["ddim"](eta="0"), "eta", "type"),
    Row("ddim-eta-traced", lambda: _jit(lambda e: CONTINUOUS["ddim"](eta=e)[0])(2.0), "eta", "traced"),
    Row("dpm_solver-order-float", lambda: CONTINUOUS["dpm_solver"](order=2.0), "order", "integer"),
    Row("dpm_solver-order-four", lambda: CONTINUOUS["dpm_solver"](order=4), "order", "range"),
    Row("dpm_solver-order-str", lambda: CONTINUOUS["dpm_solver"](order="2"), "order", "type"),
    Row("dpm_solver-stochastic-int", lambda: CONTINUOUS["dpm_solver"](stochastic=1), "stochastic", "type"),
    Row("dpm_solver-stochastic-order3", lambda: CONTINUOUS["dpm_solver_sde"](order=3), "order", "range"),
    Row("dpm_solver-lower_order_final-str", lambda: CONTINUOUS["dpm_solver"](lower_order_final="no"), "lower_order_final", "type"),
    Row("unipc-variant-bad", lambda: CONTINUOUS["unipc"](variant="bh3"), "variant", "range"),
    Row("unipc-order-float", lambda: CONTINUOUS["unipc"](order=1.0), "order", "integer"),
    Row("heun-num_steps-one", lambda: CONTINUOUS["heun"](num_steps=1), "num_steps", "range"),
    Row("heun-churn-neg", lambda: CONTINUOUS["heun"](churn=-1.0), "churn", "range"),
    Row("heun-s_noise-nan", lambda: CONTINUOUS["heun"](s_noise=NAN), "s_noise", "nonfinite"),
    Row("heun-s_tmax-str", lambda: CONTINUOUS["heun"](s_tmax="a"), "s_tmax", "type"),
    Row("euler-s_tmin-inf", lambda: CONTINUOUS["euler"](s_tmin=INF), "s_tmin", "nonfinite"),
    Row("reverse_sde-solver-str", lambda: SDE(solver="euler"), "solver", "type"),
    Row("reverse_sde-solver-terms", lambda: SDE(solver=dfx.SemiImplicitEuler()), "solver", "type"),
    Row("reverse_sde-solver-implicit", lambda: SDE(solver=dfx.Kvaerno3()), "solver", "type"),
    Row("reverse_sde-solver-fixed-adaptive", lambda: SDE(stepsize_controller=PID, solver=dfx.Euler()), "solver", "type"),
    Row("reverse_sde-controller-str", lambda: SDE(stepsize_controller="pid"), "stepsize_controller", "type"),
    Row("reverse_sde-max_steps-zero", lambda: SDE(max_steps=0), "max_steps", "range"),
    Row("reverse_sde-max_steps-float", lambda: SDE(max_steps=10.0), "max_steps", "integer"),
    Row("reverse_sde-projection-adaptive", lambda: SDE(stepsize_controller=PID, projection=lambda k, x, t: x), "projection", "range"),
    Row("pc-corrector_steps-neg", lambda: CONTINUOUS["predictor_corrector"](corrector_steps=-1), "corrector_steps", "range"),
    Row("pc-corrector_steps-float", lambda: CONTINUOUS["predictor_corrector"](corrector_steps=1.0), "corrector_steps", "integer"),
    Row("pc-snr-neg", lambda: CONTINUOUS["predictor_corrector"](snr=-0.1), "snr", "range"),
    Row("pc-snr-str", lambda: CONTINUOUS["predictor_corrector"](snr="a"), "snr", "type"),
    Row("pc-predictor-bad", lambda: CONTINUOUS["predictor_corrector"](predictor="ode"), "predictor", "range"),
    Row("pc-norm-bad", lambda: CONTINUOUS["predictor_corrector"](norm="max"), "norm", "range"),
    Row("pf-steps-and-controller", lambda: PF(stepsize_controller=PID), "num_steps", "range"),
    Row("pf-controller-str", lambda: PF(num_steps=None, stepsize_controller="pid"), "stepsize_controller", "type"),
    Row("pf-solver-fixed-adaptive", lambda: PF(num_steps=None, solver=dfx.Euler()), "solver", "range"),
    Row("pf-solver-sde", lambda: PF(solver=dfx.SEA()), "solver", "type"),
    Row("pf-solver-sde-adaptive", lambda: PF(num_steps=None, solver=dfx.ShARK()), "solver", "type"),
    Row("pf-solver-implicit-fixed", lambda: PF(solver=dfx.Kvaerno3()), "solver", "type"),
    Row("pf-max_steps-zero", lambda: PF(num_steps=None, max_steps=0), "max_steps", "range"),
    Row("ode-key-str", lambda: samplers.ode("key", SCORE, SHAPE, num_steps=2), "key", "key"),
    # encode / decode take the data instead of a key and a shape
    Row("encode-x-str", lambda: samplers.encode(SCORE, "x", num_steps=2), "x", "type"),
    Row("encode-x-none", lambda: samplers.encode(SCORE, None, num_steps=2), "x", "type"),
    Row("encode-x-int", lambda: samplers.encode(SCORE, jnp.zeros(SHAPE, int), num_steps=2), "x", "dtype"),
    Row("encode-x-no-event", lambda: samplers.encode(SCORE, jnp.zeros(4), num_steps=2), "x", "shape"),
    Row("encode-x-empty-batch", lambda: samplers.encode(SCORE, jnp.zeros((0, 2)), num_steps=2), "x", "range"),
    Row("encode-model-str", lambda: samplers.encode("m", X, num_steps=2), "model", "type"),
    Row("encode-model-discrete", lambda: samplers.encode(EPS, X, num_steps=2), "model", "type"),
    Row("encode-model-complex", lambda: samplers.encode(COMPLEX, X, num_steps=2), "model", "dtype"),
    Row("encode-num_steps-float", lambda: samplers.encode(SCORE, X, num_steps=2.0), "num_steps", "integer"),
    Row("encode-t_eps-nan", lambda: samplers.encode(SCORE, X, num_steps=2, t_eps=NAN), "t_eps", "nonfinite"),
    Row("encode-solver-sde", lambda: samplers.encode(SCORE, X, num_steps=2, solver=dfx.SEA()), "solver", "type"),
    Row("decode-z-str", lambda: samplers.decode(SCORE, "z", num_steps=2), "z", "type"),
    Row("decode-z-complex", lambda: samplers.decode(SCORE, X.astype(jnp.complex64), num_steps=2), "z", "dtype"),
    Row("decode-grid-bad", lambda: samplers.decode(SCORE, X, num_steps=2, grid="cosine"), "grid", "range"),
    Row("decode-max_steps-str", lambda: samplers.decode(SCORE, X, max_steps="10"), "max_steps", "type"),
]
test_samplers = table_test(SAMPLERS)

# ----------------------------------------------------------------------------- likelihood
LP = dj.likelihood
EXACT = LP.Exact()
LIKELIHOOD = [
    Row("log_prob-model-str", lambda: LP.log_prob("m", X, divergence=EXACT), "model", "type"),
    Row("log_prob-model-discrete", lambda: LP.log_prob(EPS, X, divergence=EXACT), "model", "type"),
    Row("log_prob-model-complex", lambda: LP.log_prob(COMPLEX, X, divergence=EXACT), "model", "dtype"),
    Row("log_prob-model-wide", lambda: LP.log_prob(WIDE, X, divergence=EXACT), "model", "shape"),
    Row("log_prob-x-str", lambda: LP.log_prob(SCORE, "x", divergence=EXACT), "x", "type"),
    Row("log_prob-x-none", lambda: LP.log_prob(SCORE, None, divergence=EXACT), "x", "type"),
    Row("log_prob-x-no-event", lambda: LP.log_prob(SCORE, jnp.zeros(4), divergence=EXACT), "x", "shape"),
    Row("log_prob-x-empty-batch", lambda: LP.log_prob(SCORE, jnp.zeros((0, 2)), divergence=EXACT), "x", "shape"),
    Row("log_prob-divergence-str", lambda: LP.log_prob(SCORE, X, divergence="exact"), "divergence", "type"),
    Row("log_prob-key-missing", lambda: LP.log_prob(SCORE, X), "key", "range"),
    Row("log_prob-key-str", lambda: LP.log_prob(SCORE, X, key="key"), "key", "key"),
    Row("log_prob-solver-str", lambda: LP.log_prob(SCORE, X, divergence=EXACT, solver="tsit5"), "solver", "type"),
    Row("log_prob-solver-fixed", lambda: LP.log_prob(SCORE, X, divergence=EXACT, solver=dfx.Euler()), "solver", "type"),
    Row("log_prob-controller-int", lambda: LP.log_prob(SCORE, X, divergence=EXACT, stepsize_controller=3), "stepsize_controller", "type"),
    Row("log_prob-t_eps-nan", lambda: LP.log_prob(SCORE, X, divergence=EXACT, t_eps=NAN), "t_eps", "nonfinite"),
    Row("log_prob-t_max-big", lambda: LP.log_prob(SCORE, X, divergence=EXACT, t_max=3.0), "t_max", "range"),
    Row("log_prob-max_steps-zero", lambda: LP.log_prob(SCORE, X, divergence=EXACT, max_steps=0), "max_steps", "range"),
    Row("log_prob-prior-int", lambda: LP.log_prob(SCORE, X, divergence=EXACT, prior_log_prob_fn=3), "prior_log_prob_fn", "type"),
    Row("log_prob-prior-shape", lambda: LP.log_prob(SCORE, X, divergence=EXACT, prior_log_prob_fn=lambda z: z), "prior_log_prob_fn", "shape"),
    Row("log_prob-process-str", lambda: LP.log_prob(SCORE, X, divergence=EXACT, process="vp"), "process", "type"),
    Row("Hutchinson-num_probes-zero", lambda: LP.Hutchinson(0), "num_probes", "range"),
    Row("Hutchinson-num_probes-float", lambda: LP.Hutchinson(1.0), "num_probes", "integer"),
    Row("Hutchinson-probe-bad", lambda: LP.Hutchinson(1, "uniform"), "probe", "range"),
    Row("bits_per_dim-logp-str", lambda: LP.bits_per_dim("a", (2,)), "logp", "type"),
    Row("bits_per_dim-event_shape-int", lambda: LP.bits_per_dim(jnp.zeros(4), 2), "event_shape", "type"),
    Row("bits_per_dim-data_range-zero", lambda: LP.bits_per_dim(jnp.zeros(4), (2,), data_range=0), "data_range", "range"),
    Row("bits_per_dim-interval-order", lambda: LP.bits_per_dim(jnp.zeros(4), (2,), data_interval=(1.0, -1.0)), "data_interval", "range"),
    Row("bits_per_dim-interval-str", lambda: LP.bits_per_dim(jnp.zeros(4), (2,), data_interval="ab"), "data_interval", "type"),
    Row("dequantize-x-range", lambda: LP.dequantize(KEY, jnp.full(SHAPE, 300.0), data_range=17), "x", "range"),
    Row("dequantize-x-str", lambda: LP.dequantize(KEY, "x"), "x", "type"),
    Row("dequantize-key-str", lambda: LP.dequantize("key", X), "key", "key"),
    Row("dequantize-data_range-float", lambda: LP.dequantize(KEY, X, data_range=17.0), "data_range", "integer"),
]
test_likelihood = table_test(LIKELIHOOD)

# ----------------------------------------------------------------------------- guidance
G = dj.guidance
LOGITS = dj.distributions.exact_classifier(dj.GaussianMixture([0.5, 0.5], np.eye(2), [1.0, 1.0]), VP, [0, 1])
COND = dj.Model(lambda x, t, y: x + y[:, None], VP, "eps")
GUIDANCE = [
    Row("cg-model-str", lambda: G.classifier_guidance("m", LOGITS, 0), "model", "type"),
    Row("cg-log_prob_fn-none", lambda: G.classifier_guidance(SCORE, None, 0), "log_prob_fn", "type"),
    Row("cg-y-float", lambda: G.classifier_guidance(SCORE, LOGITS, 0.5), "y", "type"),
    Row("cg-y-none", lambda: G.classifier_guidance(SCORE, LOGITS, None), "y", "type"),
    Row("cg-y-neg", lambda: G.classifier_guidance(SCORE, LOGITS, -1), "y", "range"),
    Row("cg-y-matrix", lambda: G.classifier_guidance(SCORE, LOGITS, jnp.zeros((2, 2), int)), "y", "shape"),
    Row("cg-y-classes", lambda: samplers.dpm_solver(KEY, G.classifier_guidance(SCORE, LOGITS, 5), SHAPE), "y", "range"),
    Row("cg-y-batch", lambda: samplers.dpm_solver(KEY, G.classifier_guidance(SCORE, LOGITS, jnp.zeros(3, int)), SHAPE), "y", "shape"),
    Row("cg-scale-neg", lambda: G.classifier_guidance(SCORE, LOGITS, 0, -1.0), "scale", "range"),
    Row("cg-scale-nan", lambda: G.classifier_guidance(SCORE, LOGITS, 0, NAN), "scale", "nonfinite"),
    Row("cg-scale-str", lambda: G.classifier_guidance(SCORE, LOGITS, 0, "1"), "scale", "type"),
    Row("cfg-model-none", lambda: G.classifier_free(None, 0, 3), "model", "type"),
    Row("cfg-null_label-str", lambda: G.classifier_free(COND, 0, "3"), "null_label", "type"),
    Row("cfg-null_label-neg", lambda: G.classifier_free(COND, 0, -1), "null_label", "range"),
    Row("cfg-y-range", lambda: G.classifier_free(COND, 5, 3), "y", "range"),
    Row("cfg-weight-neg", lambda: G.classifier_free(COND, 0, 3, -1.0), "weight", "range"),
    Row("cfg-weight-inf", lambda: G.classifier_free(COND, 0, 3, INF), "weight", "nonfinite"),
    Row("cfg-interval-str", lambda: G.classifier_free(COND, 0, 3, interval="ab"), "interval", "type"),
    Row("cfg-interval-order", lambda: G.classifier_free(COND, 0, 3, interval=(0.5, 0.1)), "interval", "range"),
    Row("cfg-interval-nan", lambda: G.classifier_free(COND, 0, 3, interval=(NAN, 0.1)), "interval", "nonfinite"),
    Row("cfg-weight-traced", lambda: _jit(lambda w: G.classifier_free(COND, 0, 3, w)(X, 0.5))(-1.0), "weight", "traced"),
    Row("cfg-y-traced", lambda: _jit(lambda y: G.classifier_free(COND, y, 3)(X, 0.5))(7), "y", "traced"),
    Row("autoguidance-weak-str", lambda: G.autoguidance(SCORE, "weak"), "weak", "type"),
    Row("autoguidance-weak-schedule", lambda: G.autoguidance(EPS, dj.exact_model(GMM, dj.schedules.linear(5), "eps")), "weak", "range"),
    Row("autoguidance-weight-str", lambda: G.autoguidance(SCORE, SCORE, "1"), "weight", "type"),
    Row("drop_labels-p-range", lambda: G.drop_labels(KEY, jnp.zeros(4, int), 1.5, 3), "p", "range"),
    Row("drop_labels-p-str", lambda: G.drop_labels(KEY, jnp.zeros(4, int), "a", 3), "p", "type"),
    Row("drop_labels-p-nan", lambda: G.drop_labels(KEY, jnp.zeros(4, int), NAN, 3), "p", "nonfinite"),
    Row("drop_labels-labels-float", lambda: G.drop_labels(KEY, jnp.zeros(4), 0.5, 3), "labels", "type"),
    Row("drop_labels-key-str", lambda: G.drop_labels("key", jnp.zeros(4, int), 0.5, 3), "key", "key"),
    Row("inpainting-process-str", lambda: G.inpainting_projection("vp", X, X > 0), "process", "type"),
    Row("inpainting-mask-float", lambda: G.inpainting_projection(VP, X, X), "mask", "type"),
    Row("inpainting-mask-shape", lambda: G.inpainting_projection(VP, X, jnp.zeros(3, bool)), "mask", "shape"),
    Row("inpainting-x_known-str", lambda: G.inpainting_projection(VP, "x", X > 0), "x_known", "type"),
    Row("inpainting-batch", lambda: samplers.ddim(KEY, SCORE, (3, 2), num_steps=2, projection=G.inpainting_projection(VP, X, X > 0)), "projection", "shape"),
]
test_guidance = table_test(GUIDANCE)

# ----------------------------------------------------------------------------- langevin
SCORE_X = lambda x: -x  # noqa: E731
SCORE_SIGMA = lambda x, sigma: -x / (1.0 + sigma[:, None] ** 2)  # noqa: E731
LV = dj.langevin
LANGEVIN = [
    Row("ula-key-str", lambda: LV.ula("key", SCORE_X, X, step_size=0.1, num_steps=2), "key", "key"),
    Row("ula-score_fn-none", lambda: LV.ula(KEY, None, X, step_size=0.1, num_steps=2), "score_fn", "type"),
    Row("ula-score_fn-shape", lambda: LV.ula(KEY, lambda x: x[:, :1], X, step_size=0.1, num_steps=2), "score_fn", "shape"),
    Row("ula-x_init-str", lambda: LV.ula(KEY, SCORE_X, "x", step_size=0.1, num_steps=2), "x_init", "type"),
    Row("ula-x_init-vector", lambda: LV.ula(KEY, SCORE_X, jnp.zeros(4), step_size=0.1, num_steps=2), "x_init", "shape"),
    Row("ula-step_size-zero", lambda: LV.ula(KEY, SCORE_X, X, step_size=0.0, num_steps=2), "step_size", "range"),
    Row("ula-step_size-nan", lambda: LV.ula(KEY, SCORE_X, X, step_size=NAN, num_steps=2), "step_size", "nonfinite"),
    Row("ula-step_size-str", lambda: LV.ula(KEY, SCORE_X, X, step_size="a", num_steps=2), "step_size", "type"),
    Row("ula-num_steps-float", lambda: LV.ula(KEY, SCORE_X, X, step_size=0.1, num_steps=2.0), "num_steps", "integer"),
    Row("ula-step_size-traced", lambda: _jit(lambda h: LV.ula(KEY, SCORE_X, X, step_size=h, num_steps=2)[0])(-1.0), "step_size", "traced"),
    Row("annealed-sigmas-increasing", lambda: LV.annealed(KEY, SCORE_SIGMA, [0.1, 1.0], SHAPE), "sigmas", "range"),
    Row("annealed-sigmas-nan", lambda: LV.annealed(KEY, SCORE_SIGMA, [1.0, NAN], SHAPE), "sigmas", "nonfinite"),
    Row("annealed-sigmas-str", lambda: LV.annealed(KEY, SCORE_SIGMA, "ab", SHAPE), "sigmas", "type"),
    Row("annealed-sigmas-empty", lambda: LV.annealed(KEY, SCORE_SIGMA, [], SHAPE), "sigmas", "shape"),
    Row("annealed-shape-negative", lambda: LV.annealed(KEY, SCORE_SIGMA, [1.0], (-1, 2)), "shape", "range"),
    Row("annealed-steps_per_level-zero", lambda: LV.annealed(KEY, SCORE_SIGMA, [1.0], SHAPE, steps_per_level=0), "steps_per_level", "range"),
    Row("annealed-init-shape", lambda: LV.annealed(KEY, SCORE_SIGMA, [1.0], SHAPE, init=jnp.zeros((3, 2))), "init", "shape"),
    Row("annealed-score_fn-str", lambda: LV.annealed(KEY, "s", [1.0], SHAPE), "score_fn", "type"),
    Row("annealed-step_size-inf", lambda: LV.annealed(KEY, SCORE_SIGMA, [1.0], SHAPE, step_size=INF), "step_size", "nonfinite"),
    Row("corrector-norm-bad", lambda: LV.langevin_corrector(KEY, SCORE_SIGMA, X, 0.5, snr=0.1, norm="max"), "norm", "range"),
]
test_langevin = table_test(LANGEVIN)

# ----------------------------------------------------------------------------- fokker_planck
FP = dj.fokker_planck
GRID = jnp.linspace(-3.0, 3.0, 8)
P0 = jnp.exp(-0.5 * GRID**2)
TS = jnp.array([0.0, 0.1])
DRIFT = lambda x, t: -x  # noqa: E731
DIFF = lambda t: 1.0 + 0.0 * t  # noqa: E731
FOKKER_PLANCK = [
    Row("solve_1d-drift-none", lambda: FP.solve_1d(None, DIFF, P0, GRID, TS), "drift", "type"),
    Row("solve_1d-diffusion-str", lambda: FP.solve_1d(DRIFT, "g", P0, GRID, TS), "diffusion", "type"),
    Row("solve_1d-drift-shape", lambda: FP.solve_1d(lambda x, t: jnp.zeros(3), DIFF, P0, GRID, TS), "drift", "shape"),
    Row("solve_1d-diffusion-shape", lambda: FP.solve_1d(DRIFT, lambda t: jnp.ones(2), P0, GRID, TS), "diffusion", "shape"),
    Row("solve_1d-p0-neg", lambda: FP.solve_1d(DRIFT, DIFF, -P0, GRID, TS), "p0", "range"),
    Row("solve_1d-p0-nan", lambda: FP.solve_1d(DRIFT, DIFF, P0 * NAN, GRID, TS), "p0", "nonfinite"),
    Row("solve_1d-p0-shape", lambda: FP.solve_1d(DRIFT, DIFF, P0[:3], GRID, TS), "p0", "shape"),
    Row("solve_1d-p0-str", lambda: FP.solve_1d(DRIFT, DIFF, "p", GRID, TS), "p0", "type"),
    Row("solve_1d-grid-short", lambda: FP.solve_1d(DRIFT, DIFF, P0[:2], GRID[:2], TS), "grid", "shape"),
    Row("solve_1d-grid-uneven", lambda: FP.solve_1d(DRIFT, DIFF, P0, GRID**3, TS), "grid", "range"),
    Row("solve_1d-grid-none", lambda: FP.solve_1d(DRIFT, DIFF, P0, None, TS), "grid", "type"),
    Row("solve_1d-ts-decreasing", lambda: FP.solve_1d(DRIFT, DIFF, P0, GRID, TS[::-1]), "ts", "range"),
    Row("solve_1d-ts-short", lambda: FP.solve_1d(DRIFT, DIFF, P0, GRID, TS[:1]), "ts", "shape"),
    Row("solve_1d-max_steps-zero", lambda: FP.solve_1d(DRIFT, DIFF, P0, GRID, TS, max_steps=0), "max_steps", "range"),
    # the "EquinoxRuntimeError not saying to raise max_steps" (reverse_sde's case: test_sampler_grid)
    Row("solve_1d-max_steps-exhausted", lambda: FP.solve_1d(DRIFT, DIFF, P0, GRID, TS, max_steps=1), "max_steps", "solver"),
    Row("solve_1d-solver-str", lambda: FP.solve_1d(DRIFT, DIFF, P0, GRID, TS, solver="tsit5"), "solver", "type"),
    Row("solve_1d-controller-str", lambda: FP.solve_1d(DRIFT, DIFF, P0, GRID, TS, stepsize_controller="pid"), "stepsize_controller", "type"),
    Row("solve_sde_1d-sde-str", lambda: FP.solve_sde_1d("vp", P0, GRID, TS), "sde", "type"),
    Row("solve_sde_1d-ts-range", lambda: FP.solve_sde_1d(VP, P0, GRID, jnp.array([0.0, 2.0])), "ts", "range"),
]
test_fokker_planck = table_test(FOKKER_PLANCK)

# ----------------------------------------------------------------------------- metrics
M = dj.metrics
METRICS = [
    Row("energy_distance-x-str", lambda: M.energy_distance("x", X), "x", "type"),
    Row("energy_distance-y-none", lambda: M.energy_distance(X, None), "y", "type"),
    Row("energy_distance-event", lambda: M.energy_distance(X, jnp.zeros((4, 3))), "x", "shape"),
    Row("energy_distance-one-sample", lambda: M.energy_distance(X[:1], X), "x", "shape"),
    Row("mmd-bandwidth-zero", lambda: M.mmd(X, X, 0.0), "bandwidth", "range"),
    Row("mmd-bandwidth-str", lambda: M.mmd(X, X, "a"), "bandwidth", "type"),
    Row("mmd-bandwidth-nan", lambda: M.mmd(X, X, NAN), "bandwidth", "nonfinite"),
    Row("mmd-x-complex", lambda: M.mmd(X.astype(jnp.complex64), X), "x", "dtype"),
    Row("sliced-key-str", lambda: M.sliced_wasserstein("key", X, X), "key", "key"),
    Row("sliced-num_projections-zero", lambda: M.sliced_wasserstein(KEY, X, X, 0), "num_projections", "range"),
    Row("sliced-sizes", lambda: M.sliced_wasserstein(KEY, X, X[:3]), "x", "shape"),
]
test_metrics = table_test(METRICS)

# ----------------------------------------------------------------------------- data
D = dj.data
NPZ_DIR = tempfile.mkdtemp(prefix="diffjax-badinput-")


def _file(name: str, content: bytes) -> str:
    path = os.path.join(NPZ_DIR, name)
    with open(path, "wb") as f:
        f.write(content)
    return path


CORRUPT = _file("corrupt.npz", b"PK\x03\x04 this is not a zip archive")
EMPTY = _file("empty.npz", b"")
DATA = [
    Row("eight_gaussians-key-str", lambda: D.eight_gaussians("key", 4), "key", "key"),
    Row("eight_gaussians-n-zero", lambda: D.eight_gaussians(KEY, 0), "n", "range"),
    Row("eight_gaussians-n-float", lambda: D.eight_gaussians(KEY, 4.0), "n", "integer"),
    Row("eight_gaussians-std-neg", lambda: D.eight_gaussians(KEY, 4, std=-1.0), "std", "range"),
    Row("eight_gaussians-radius-str", lambda: D.eight_gaussians(KEY, 4, radius="2"), "radius", "type"),
    Row("eight_gaussians-radius-nan", lambda: D.eight_gaussians(KEY, 4, radius=NAN), "radius", "nonfinite"),
    Row("two_moons-noise-neg", lambda: D.two_moons(KEY, 4, noise=-1.0), "noise", "range"),
    Row("two_moons-noise-inf", lambda: D.two_moons(KEY, 4, noise=INF), "noise", "nonfinite"),
    Row("swiss_roll-noise-str", lambda: D.swiss_roll(KEY, 4, noise="a"), "noise", "type"),
    Row("checkerboard-n-str", lambda: D.checkerboard(KEY, "4"), "n", "type"),
    Row("two_class-key-none", lambda: D.two_class(None, 4), "key", "key"),
    Row("load_npz-path-int", lambda: D.load_npz(3), "path", "type"),
    Row("load_npz-missing", lambda: D.load_npz(os.path.join(NPZ_DIR, "missing.npz")), os.path.join(NPZ_DIR, "missing.npz"), "range", FileNotFoundError),
    Row("load_npz-corrupt", lambda: D.load_npz(CORRUPT), CORRUPT, "range"),
    Row("load_npz-empty", lambda: D.load_npz(EMPTY), EMPTY, "range"),
    Row("batches-key-str", lambda: D.batches("key", X, 2), "key", "key"),
    Row("batches-batch_size-big", lambda: D.batches(KEY, X, 5), "batch_size", "range"),
    Row("batches-batch_size-float", lambda: D.batches(KEY, X, 2.0), "batch_size", "integer"),
    Row("batches-data-none", lambda: D.batches(KEY, None, 2), "data", "range"),
    Row("batches-data-leading", lambda: D.batches(KEY, (X, jnp.zeros(3)), 2), "data", "shape"),
    Row("check_finite-nan", lambda: D.check_finite(X.at[1, 0].set(NAN), "`x`"), "x", "nonfinite"),
]
test_data = table_test(DATA)


# ----------------------------------------------------------------------------- training, nets
def _training_rows():
    import optax

    T = dj.training
    opt = optax.sgd(0.1)
    loss = lambda p, batch, key: (jnp.sum(p * batch), {})  # noqa: E731
    state = T.create_train_state(jnp.ones(2), opt)
    return [
        Row("create_train_state-optimizer-str", lambda: T.create_train_state(X, "adam"), "optimizer", "type"),
        Row("create_train_state-ema_decay-one", lambda: T.create_train_state(X, opt, ema_decay=1.0), "ema_decay", "range"),
        Row("create_train_state-ema_decay-str", lambda: T.create_train_state(X, opt, ema_decay="a"), "ema_decay", "type"),
        Row("create_train_state-ema_decay-nan", lambda: T.create_train_state(X, opt, ema_decay=NAN), "ema_decay", "nonfinite"),
        Row("make_train_step-loss_fn-none", lambda: T.make_train_step(None, opt), "loss_fn", "type"),
        Row("make_train_step-optimizer-none", lambda: T.make_train_step(loss, None), "optimizer", "type"),
        Row("make_train_step-mesh-str", lambda: T.make_train_step(loss, opt, mesh="m"), "mesh", "type"),
        Row("train_step-state-tuple", lambda: T.make_train_step(loss, opt)((1, 2), X, KEY), "state", "type"),
        Row("train_step-ema-mismatch", lambda: T.make_train_step(loss, opt, ema_decay=0.9)(state, jnp.ones(2), KEY), "ema_decay", "range"),
        Row("train_step-loss-not-pair", lambda: T.make_train_step(lambda p, b, k: jnp.sum(p), opt)(state, jnp.ones(2), KEY), "loss_fn", "type"),
        Row("train_step-loss-vector", lambda: T.make_train_step(lambda p, b, k: (p, {}), opt)(state, jnp.ones(2), KEY), "loss_fn", "shape"),
        Row("Checkpointer-interval-zero", lambda: T.Checkpointer(NPZ_DIR, save_interval_steps=0), "save_interval_steps", "range"),
        Row("Checkpointer-max_to_keep-float", lambda: T.Checkpointer(NPZ_DIR, max_to_keep=2.0), "max_to_keep", "integer"),
        Row("shard_batch-data_axis-bad", lambda: T.shard_batch(X, T.make_mesh(), data_axis="model"), "data_axis", "range"),
    ]


def _nets_rows():
    from flax import nnx

    N = dj.nets
    rngs = lambda: nnx.Rngs(0)  # noqa: E731
    mlp = N.MLP(2, hidden=(8,), embed_dim=8, rngs=nnx.Rngs(0))
    return [
        Row("MLP-dim-zero", lambda: N.MLP(0, rngs=rngs()), "dim", "range"),
        Row("MLP-dim-float", lambda: N.MLP(2.0, rngs=rngs()), "dim", "integer"),
        Row("MLP-hidden-str", lambda: N.MLP(2, hidden="ab", rngs=rngs()), "hidden", "type"),
        Row("MLP-hidden-zero", lambda: N.MLP(2, hidden=(0,), rngs=rngs()), "hidden", "range"),
        Row("MLP-time_embedding-bad", lambda: N.MLP(2, time_embedding="learned", rngs=rngs()), "time_embedding", "range"),
        Row("MLP-num_classes-zero", lambda: N.MLP(2, num_classes=0, rngs=rngs()), "num_classes", "range"),
        Row("MLP-x-shape", lambda: mlp(jnp.zeros((4, 3)), jnp.zeros(4)), "x", "shape"),
        Row("MLP-t-shape", lambda: mlp(X, jnp.zeros((4, 1))), "t", "shape"),
        Row("sinusoidal-max_period-neg", lambda: N.sinusoidal_embedding(jnp.zeros(4), 4, max_period=-1.0), "max_period", "range"),
        Row("sinusoidal-dim-one", lambda: N.sinusoidal_embedding(jnp.zeros(4), 1), "dim", "range"),
        Row("SinusoidalEmbedding-time_scale-str", lambda: N.SinusoidalEmbedding(4, time_scale="a"), "time_scale", "type"),
        Row("fourier-scale-str", lambda: N.GaussianFourierEmbedding(4, scale="a", rngs=rngs()), "scale", "type"),
        Row("fourier-scale-nan", lambda: N.GaussianFourierEmbedding(4, scale=NAN, rngs=rngs()), "scale", "nonfinite"),
        Row("fourier-dim-odd", lambda: N.GaussianFourierEmbedding(3, rngs=rngs()), "dim", "range"),
        Row("split-model-str", lambda: N.split("m"), "model", "type"),
        Row("split-method-bad", lambda: N.split(mlp, method="encode"), "method", "range"),
    ]


test_training = table_test(_training_rows())
test_nets = table_test(_nets_rows())


# ----------------------------------------------------------------------------- bfloat16
# Every entry point computes bfloat16 data (or a bfloat16 network's output) in float32. The
# result's type is read with `jax.eval_shape`, which traces the compiled part without compiling.
B16 = jnp.ones(SHAPE, jnp.bfloat16)
B16_NET = lambda x, t: x.astype(jnp.bfloat16)  # noqa: E731
B16_MODEL = dj.Model(B16_NET, VP, "x0")
B16_DISCRETE = dj.Model(B16_NET, SCH, "x0")
BFLOAT16 = {
    "q_sample": lambda: dj.q_sample(VP, B16, 0.5, B16),
    "q_posterior": lambda: dj.q_posterior(SCH, B16, B16, 1)[0],
    "prior_log_prob": lambda: VP.prior_log_prob(B16),
    "gmm.log_prob": lambda: GMM.log_prob(B16, VP, 0.5),
    "model.eps": lambda: SCORE.eps(B16, 0.5),
    "dsm": lambda: L.dsm(None, APPLY, KEY, B16, VP)[0],
    "ddpm": lambda: L.ddpm(None, APPLY, KEY, B16, SCH)[0],
    "flow_matching": lambda: L.flow_matching(None, APPLY, KEY, B16)[0],
    "edm": lambda: L.edm(None, APPLY, KEY, B16)[0],
    "classifier": lambda: L.classifier(None, lambda p, x, t: jnp.zeros((4, 3), x.dtype), KEY, B16, jnp.zeros(4, int), VP)[0],
    "vae_elbo": lambda: L.vae_elbo(None, (lambda p, x: (x, x), lambda p, z: z), KEY, B16)[0],
    "ddpm_vlb": lambda: L.ddpm_vlb(EPS, KEY, B16),
    **{
        name: (lambda run=run: run(model=B16_MODEL)[0])
        for name, run in CONTINUOUS.items()
        if name in ("ddim", "dpm_solver", "unipc", "heun", "predictor_corrector")
    },
    "ddpm_sampler": lambda: DISCRETE["ddpm"](model=B16_DISCRETE)[0],
    "encode": lambda: samplers.encode(SCORE, B16, num_steps=2)[0],
    "decode": lambda: samplers.decode(B16_MODEL, X, num_steps=2)[0],
    "log_prob": lambda: LP.log_prob(SCORE, B16, divergence=EXACT)[0],
    "dequantize": lambda: LP.dequantize(KEY, B16),
    "ula": lambda: LV.ula(KEY, SCORE_X, B16, step_size=0.1, num_steps=2)[0],
    "annealed": lambda: LV.annealed(KEY, SCORE_SIGMA, [1.0], SHAPE, init=B16, steps_per_level=2)[0],
    "energy_distance": lambda: M.energy_distance(B16, B16),
    "mmd": lambda: M.mmd(B16, B16),
    "sliced_wasserstein": lambda: M.sliced_wasserstein(KEY, B16, B16),
    "inpainting": lambda: G.inpainting_projection(VP, B16, X > 0)(KEY, X, 0.5),
}


@pytest.mark.parametrize("name", list(BFLOAT16))
def test_bfloat16_computed_in_float32(name):
    assert jax.eval_shape(BFLOAT16[name]).dtype == jnp.float32
