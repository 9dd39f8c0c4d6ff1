"""diffjax against diffusers (PyTorch CPU): sampling throughput and training steps per second.

The torch network mirrors `nets.MLP(2, hidden=(256, 256, 256))` layer for layer (sinusoidal
time embedding of width 128, `Linear -> SiLU -> Linear` conditioning, per-layer conditioning
projections added before each SiLU), so both sides pay the same FLOPs per evaluation. diffusers
runs its own scheduler loops (`DDPMScheduler`, `DPMSolverMultistepScheduler` with
`algorithm_type="dpmsolver++"`), under `torch.inference_mode()`; training uses its
`DDPMScheduler.add_noise` and `torch.optim.Adam`. torch gets as many threads as XLA's CPU
client uses (all logical cores).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import optax

import diffjax as dj
from benchmarks.config import Config
from benchmarks.overhead import mlp
from benchmarks.timing import compare, ms, table
from diffjax import losses, samplers, schedules, training
from diffjax.data import eight_gaussians


def torch_mlp(dim: int = 2, hidden=(256, 256, 256), embed_dim: int = 128):
    """The torch twin of `nets.MLP(dim, hidden=hidden, embed_dim=embed_dim)`."""
    import torch
    from torch import nn

    class TorchMLP(nn.Module):
        def __init__(self):
            super().__init__()
            half = embed_dim // 2
            freqs = torch.exp(-math.log(10_000.0) * torch.arange(half) / half)
            self.register_buffer("freqs", freqs)
            self.dense1 = nn.Linear(embed_dim, embed_dim)
            self.dense2 = nn.Linear(embed_dim, embed_dim)
            widths = (dim, *hidden, dim)
            self.layers = nn.ModuleList(
                nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
            )
            self.cond_proj = nn.ModuleList(nn.Linear(embed_dim, h) for h in hidden)

        def forward(self, x, t):
            args = t.to(x.dtype)[:, None] * self.freqs[None, :]
            emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
            c = self.dense2(nn.functional.silu(self.dense1(emb)))
            h = self.layers[0](x)
            for proj, layer in zip(self.cond_proj, self.layers[1:], strict=True):
                h = layer(nn.functional.silu(h + proj(c)))
            return h

    return TorchMLP()


def _diffusers_sample(net, scheduler, num_steps: int, batch: int, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(num_steps)
    x = torch.randn(batch, 2, generator=generator)
    with torch.inference_mode():
        for t in scheduler.timesteps:
            eps = net(x, t.expand(batch))
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
    return x


def run(cfg: Config, compile_rows: list) -> str:
    try:
        import diffusers
        import torch
    except ImportError:
        return (
            "## 2. Against diffusers\n\nSkipped: torch/diffusers are not installed "
            "(`make bench` installs the `bench` extra into `benchmarks/.venv-bench`)."
        )
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    B, T = cfg.batch, 1000
    apply, params = mlp()
    net = torch_mlp().eval()
    key = jax.random.key(0)
    schedule = schedules.linear(T)
    sde = dj.VPSDE.from_ddpm(T)
    kw = dict(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    rows = []

    print("  peers: DDPM", flush=True)
    ddpm_sched = diffusers.DDPMScheduler(**kw, clip_sample=False)
    steps, B_ddpm = cfg.ddpm_steps, cfg.ddpm_batch
    ddpm_schedule = schedule if steps == T else schedules.linear(steps)
    ddpm_model = dj.Model(apply, ddpm_schedule, "eps", params=params)
    res = compare(
        {
            "ours": lambda: samplers.ddpm(key, ddpm_model, (B_ddpm, 2))[0],
            "theirs": lambda: _diffusers_sample(net, ddpm_sched, steps, B_ddpm),
        },
        cfg.repeats,
    )
    compile_rows.append((f"samplers.ddpm (T={steps})", res["ours"][0].compile))
    rows.append(_sampling_row(f"DDPM, {steps} steps, batch {B_ddpm}", steps, steps, res, B_ddpm))

    print("  peers: DPM-Solver++", flush=True)
    dpm_sched = diffusers.DPMSolverMultistepScheduler(
        **kw, algorithm_type="dpmsolver++", solver_order=2
    )
    model = dj.Model(apply, sde, "eps", params=params)
    res = compare(
        {
            "ours": lambda: samplers.dpm_solver(key, model, (B, 2), num_steps=20)[0],
            "theirs": lambda: _diffusers_sample(net, dpm_sched, 20, B),
        },
        cfg.repeats,
    )
    compile_rows.append(("samplers.dpm_solver (20 steps)", res["ours"][0].compile))
    rows.append(_sampling_row(f"DPM-Solver++(2M), 20 steps, batch {B}", 21, 20, res, B))

    print("  peers: training", flush=True)
    rows.append(_training_row(cfg, apply, params, net, ddpm_sched, schedule, compile_rows))

    header = ["task", "NFE ours / theirs", "ours", "diffusers", "ours / theirs (throughput)"]
    return "\n".join(
        [
            "## 2. Against diffusers (PyTorch CPU)",
            "",
            f"Same MLP (widths 256x3, sinusoidal time embedding 128 + 2-layer conditioning "
            f"MLP), 2-D; torch {torch.__version__} with `torch.set_num_threads({threads})` "
            f"(XLA's CPU client uses all {threads} cores) and `OMP_WAIT_POLICY="
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}` (on this loaded machine torch's "
            "default spinning OpenMP threads ran 2 threads 4x slower than 1; passive waiting "
            "fixes it), "
            f"diffusers {diffusers.__version__}. Medians of {cfg.repeats} interleaved runs. "
            "Throughput ratio > 1 means diffjax is faster. Our DPM-Solver++ spends one extra "
            "evaluation on the final denoising step to `sigma = 0`; diffusers' last step "
            "(`final_sigmas_type='zero'`) does not.",
            "",
            table(header, rows),
        ]
    )


def _sampling_row(name, nfe_ours, nfe_theirs, res, batch):
    ours, theirs = res["ours"][0].median, res["theirs"][0].median
    return [
        name,
        f"{nfe_ours} / {nfe_theirs}",
        f"{ms(ours)} ({batch / ours:,.0f} samples/s)",
        f"{ms(theirs)} ({batch / theirs:,.0f} samples/s)",
        f"{theirs / ours:.2f}",
    ]


def _training_row(cfg, apply, params, net, ddpm_sched, schedule, compile_rows):
    import torch

    B, n = cfg.batch, cfg.train_steps
    x0 = eight_gaussians(jax.random.key(3), B)
    optimizer = optax.adam(1e-3)
    step = training.make_train_step(
        lambda p, batch, key: losses.ddpm(p, apply, key, batch, schedule), optimizer
    )
    state = training.create_train_state(params, optimizer)
    keys = list(jax.random.split(jax.random.key(4), n))

    def ours():
        nonlocal state
        for k in keys:
            state, metrics = step(state, x0, k)
        return metrics["loss"]

    x0_t = torch.from_numpy(jax.device_get(x0).copy())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()

    def theirs():
        for _ in range(n):
            t = torch.randint(0, ddpm_sched.config.num_train_timesteps, (B,))
            noise = torch.randn_like(x0_t)
            x_t = ddpm_sched.add_noise(x0_t, noise, t)
            loss = torch.mean((net(x_t, t) - noise) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss.detach()

    res = compare({"ours": ours, "theirs": theirs}, cfg.repeats)
    net.eval()
    t_ours, t_theirs = res["ours"][0], res["theirs"][0]
    compile_rows.append(("training.make_train_step step (Adam)", t_ours.compile))
    assert bool(jnp.isfinite(res["ours"][1])) and math.isfinite(float(res["theirs"][1]))
    return [
        f"training, Adam, {n} steps per run, batch {B}",
        "-",
        f"{ms(t_ours.median)} ({n / t_ours.median:.1f} steps/s)",
        f"{ms(t_theirs.median)} ({n / t_theirs.median:.1f} steps/s)",
        f"{t_theirs.median / t_ours.median:.2f}",
    ]
