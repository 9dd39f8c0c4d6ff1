"""Benchmark settings shared by the groups (`full()` for `make bench`, `quick()` for a smoke run)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
    repeats: int = 5  # steady-state runs per measurement (medians reported)
    batch: int = 4096  # samples per sampler call (2-D)
    nfe: int = 20  # network evaluations per sampler call in the overhead group
    ddpm_steps: int = 1000  # DDPM steps in the diffusers comparison
    # DDPM-1000 batch in the diffusers comparison: at 4096, 12 runs of 1000 evaluations take
    # about 15 min on the shared 2-core machine, so this one uses a smaller batch.
    ddpm_batch: int = 1024
    train_steps: int = 20  # Adam steps per timed run
    quality_n: int = 4000  # samples for energy distance / per-mode std
    quality_nfes: tuple[int, ...] = (5, 8, 10, 15, 20, 50)
    nll_points: int = 4096  # 2-D points in the likelihood group
    mixture_batch: int = 256  # [B, 8, 8, 1] mixture NLL, as in the H100 table
    digits_batch: int = 32  # the untrained U-Net's field is stiff (~800 NFE at 1e-3)
    unet_train_steps: int = 0  # Adam steps on the digits U-Net before the bits/dim (0: untrained)
    digits_tol: float = 1e-3  # rtol = atol of the digits NLL
    digits_steps: int = 0  # training steps of each digits recipe (0: the recipe's own)
    quick: bool = False
    match: str = ""  # regex: only the overhead rows whose name matches (all when empty)


def full() -> Config:
    return Config()


def quick() -> Config:
    """Tiny sizes for checking the code paths (numbers meaningless)."""
    return Config(
        repeats=1,
        batch=256,
        nfe=6,
        ddpm_steps=20,
        ddpm_batch=64,
        train_steps=2,
        quality_n=400,
        quality_nfes=(5,),
        nll_points=128,
        mixture_batch=8,
        digits_batch=8,
        unet_train_steps=1,
        digits_steps=2,
        quick=True,
    )
