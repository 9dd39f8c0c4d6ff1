"""Training: a pure jitted step over an explicit state, data parallelism, Orbax checkpoints.

The step is `train_step(state, batch, key) -> (state, metrics)`, built by `make_train_step`
from a loss `loss_fn(params, batch, key) -> (loss, metrics)` (e.g. a `functools.partial` of a
`diffjax.losses` function) and an Optax optimiser. Gradient clipping, learning-rate schedules,
weight decay are Optax transformations chained into the optimiser:

    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adam(optax.warmup_cosine_decay_schedule(0, 2e-4, 500, 10_000)))
    state = create_train_state(params, optimizer, ema_decay=0.999)
    train_step = make_train_step(loss_fn, optimizer, ema_decay=0.999)
    for i, batch in enumerate(batches):
        state, metrics = train_step(state, batch, jax.random.fold_in(key, i))

Data parallel (one host or many): build a mesh over all devices, replicate the state, shard
each batch along its leading axis, and pass the mesh to `make_train_step`. Multi-host runs
call `jax.distributed.initialize()` first in every process; `make_mesh()` then spans every
device of every host, `shard_batch` takes each process's local slice of the global batch, and
`replicate` expects identical values in every process (same seed). Randomness is drawn for
the global batch from one key inside the compiled step, so 1 and N devices give the same
result up to floating-point reduction order.

Parameter sharding (FSDP, ZeRO-3 style) uses the same 1-D mesh for both: the batch is sharded
over `data_axis` as above, and so are the parameters, their EMA and the optimiser state, each
array split along one dimension (`fsdp_sharding`), so every device holds `1/N` of each large
array. Place the state with `jax.device_put` and pass the same shardings to the step, which
keeps them; XLA inserts the collectives (all-gathers of the sharded parameters for the
forward and backward pass, the reduction of each gradient onto its shards):

    mesh = make_mesh()
    sharding = fsdp_sharding(state, mesh)
    state = jax.device_put(state, sharding)
    train_step = make_train_step(loss_fn, optimizer, mesh=mesh, state_sharding=sharding)

`Checkpointer.restore(like)` with a sharded `like` restores into the same shardings, or any
other (a checkpoint written by several hosts restores on one device, and the reverse). On
several hosts every process calls the step, `save` and `restore` (each with its own
`shard_batch` of its local batch, e.g. from `pipeline.make_loader`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array

from diffjax._checks import check_positive_int

__all__ = [
    "Checkpointer",
    "TrainState",
    "create_train_state",
    "ema_warmup_decay",
    "fsdp_sharding",
    "make_mesh",
    "make_train_step",
    "replicate",
    "restore_latest",
    "shard_batch",
    "state_digest",
]

_DIGEST_KEY = "diffjax_sha256"
# Orbax's per-step metadata (holding the checksum) and the array tree's metadata and OCDBT
# manifest: without them a checkpoint cannot be read.
_REQUIRED_FILES = ("_CHECKPOINT_METADATA", "default/_METADATA", "default/manifest.ocdbt")


class TrainState(NamedTuple):
    """Everything a training run carries from step to step (a pytree).

    Attributes:
        step: int32 scalar, the number of updates applied (skipped non-finite steps excluded).
        params: the network parameters.
        opt_state: the Optax optimiser state.
        ema_params: exponential moving average of `params`, or `None` when training without
            EMA (a `None` leaf costs nothing under `jit` and in checkpoints).
    """

    step: Array
    params: Any
    opt_state: Any
    ema_params: Any


def _check_optimizer(optimizer) -> optax.GradientTransformation:
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            f"`optimizer` must be an optax.GradientTransformation, got {type(optimizer).__name__}."
        )
    return optimizer


def _check_ema_decay(ema_decay) -> float | None:
    if ema_decay is None:
        return None
    if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float, np.floating)):
        raise TypeError(
            f"`ema_decay` must be a float in (0, 1) or None, got {type(ema_decay).__name__}."
        )
    if not 0.0 < float(ema_decay) < 1.0:
        raise ValueError(f"`ema_decay` must lie in (0, 1), got {ema_decay}.")
    return float(ema_decay)


def ema_warmup_decay(ema_decay: float, step) -> Array:
    r"""The EMA decay of the update that follows `step` updates: $\min(d, (1 + k) / (10 + k))$.

    Early on the decay is small (0.1 at the first update, 0.5 after 8, 0.9 after 80), so the
    EMA follows the parameters instead of averaging in their random initialisation; it
    reaches `ema_decay = d` after about $(10 d - 1) / (1 - d)$ updates (8990 for 0.999).
    """
    k = jnp.asarray(step, jnp.float32)
    return jnp.minimum(ema_decay, (1.0 + k) / (10.0 + k))


def create_train_state(params, optimizer, *, ema_decay: float | None = None) -> TrainState:
    """The initial `TrainState`: step 0, `optimizer.init(params)`, EMA initialised to `params`.

    The state holds its own copies of `params` (the train step donates the state's buffers,
    so the caller's arrays stay valid). `ema_decay` only decides whether `ema_params` exists
    (`None` -> no EMA); pass the same value to `make_train_step`, which updates it with the
    warm-up decay `ema_warmup_decay`.
    """
    _check_optimizer(optimizer)
    ema_decay = _check_ema_decay(ema_decay)
    params = jax.tree.map(jnp.array, params)
    ema = None if ema_decay is None else jax.tree.map(jnp.array, params)
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), ema)


def make_train_step(
    loss_fn: Callable,
    optimizer,
    *,
    ema_decay: float | None = None,
    mesh: Mesh | None = None,
    data_axis: str = "data",
    state_sharding=None,
    donate: bool = True,
) -> Callable:
    r"""A jitted pure step `(state, batch, key) -> (state, metrics)`.

    One step: `(loss, metrics), g = value_and_grad(loss_fn)(params, batch, key)`,
    `updates, opt_state = optimizer.update(g, opt_state, params)`,
    `params <- optax.apply_updates(params, updates)`, and with EMA
    `ema <- d_k ema + (1 - d_k) params` (`optax.incremental_update`) with the warm-up decay
    `d_k = ema_warmup_decay(ema_decay, k)` at the `k`-th update.

    Non-finite guard: when the loss or the gradient norm is not finite, the whole state is
    returned unchanged (no update, no EMA update, `step` not incremented) and
    `metrics["nonfinite"] = 1` (else 0), so the step stays one compiled program and a NaN
    batch is reported rather than trained on; the host loop decides whether to skip or stop.
    (`optax.apply_if_finite` only guards the optimiser, and applies NaN updates after
    `max_consecutive_errors`, so it is not used here.)

    Args:
        loss_fn: `loss_fn(params, batch, key) -> (loss, metrics dict)`.
        optimizer: an `optax.GradientTransformation` (chain clipping and schedules into it).
        ema_decay: the EMA's decay in (0, 1), reached after the warm-up of
            `ema_warmup_decay`, or `None`; must match `create_train_state`.
        mesh: a `jax.sharding.Mesh` for data parallelism: the state (unless
            `state_sharding`) and key are replicated and every leaf of `batch` is sharded along
            its leading axis over `data_axis` (use `replicate` / `shard_batch`). `None`:
            plain `jax.jit` on the default device.
        data_axis: the mesh axis the batch is sharded over.
        state_sharding: with `mesh`, the shardings of the state (a pytree of
            `jax.sharding.Sharding` matching the state, or one for all of it), e.g.
            `fsdp_sharding(state, mesh)`; the step takes and returns the state with these
            shardings. `None`: replicated.
        donate: donate the input state's buffers to the output (the input state must not be
            used after the call).

    Returns:
        `train_step`; `metrics` holds the loss function's metrics plus `loss`, `grad_norm`
        (before the optimiser's own clipping) and `nonfinite`. With `mesh`, a leaf of `batch`
        whose leading size is not divisible by the `data_axis` size is a `ValueError`.
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}.")
    _check_optimizer(optimizer)
    ema_decay = _check_ema_decay(ema_decay)
    if mesh is not None:
        _check_mesh(mesh, data_axis)
    if state_sharding is not None:
        if mesh is None:
            raise ValueError("`state_sharding` needs a `mesh`.")
        leaves = jax.tree.leaves(state_sharding)
        bad = [s for s in leaves if not isinstance(s, jax.sharding.Sharding)]
        if bad:
            raise TypeError(
                "`state_sharding` must be a pytree of jax.sharding.Sharding, got a leaf of type "
                f"{type(bad[0]).__name__}."
            )

    def checked_loss(params, batch, key):
        out = loss_fn(params, batch, key)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
            raise TypeError("`loss_fn` must return (loss, metrics dict).")
        if jnp.shape(out[0]) != ():
            raise ValueError(f"`loss_fn` must return a scalar loss, got shape {jnp.shape(out[0])}.")
        return out

    def train_step(state: TrainState, batch, key) -> tuple[TrainState, dict[str, Array]]:
        if not isinstance(state, TrainState):
            raise TypeError(f"`state` must be a TrainState, got {type(state).__name__}.")
        if (ema_decay is None) != (state.ema_params is None):
            raise ValueError(
                "`ema_decay` of make_train_step and create_train_state must both be set or "
                f"both be None; got ema_decay={ema_decay} and a state "
                f"{'without' if state.ema_params is None else 'with'} ema_params."
            )
        (loss, metrics), grads = jax.value_and_grad(checked_loss, has_aux=True)(
            state.params, batch, key
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = None
        if ema_decay is not None:
            decay = ema_warmup_decay(ema_decay, state.step)
            ema = optax.incremental_update(params, state.ema_params, 1.0 - decay)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = TrainState(state.step + 1, params, opt_state, ema)
        state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": grad_norm,
            "nonfinite": jnp.logical_not(finite).astype(jnp.int32),
        }
        return state, metrics

    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(train_step, donate_argnums=donate_argnums)
    replicated = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec(data_axis))
    state_sharding = replicated if state_sharding is None else state_sharding
    sharded_step = jax.jit(
        train_step,
        in_shardings=(state_sharding, data, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=donate_argnums,
    )
    num_shards = mesh.shape[data_axis]

    @functools.wraps(train_step)
    def checked_step(state, batch, key):
        # jit's own error for an indivisible batch names neither the argument nor the axis.
        for leaf in jax.tree.leaves(batch):
            shape = np.shape(leaf)
            if not shape or shape[0] % num_shards:
                raise ValueError(
                    f"every leaf of `batch` needs a leading axis divisible by the {num_shards} "
                    f"devices of the mesh axis {data_axis!r}, got shape {shape}."
                )
        return sharded_step(state, batch, key)

    return checked_step


# ----------------------------------------------------------------------------- data parallel


def make_mesh(devices=None, *, data_axis: str = "data") -> Mesh:
    """A 1-D mesh named `data_axis` over `devices` (default: `jax.devices()`, every device of
    every process after `jax.distributed.initialize()`)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("`devices` must not be empty.")
    return Mesh(np.asarray(devices), (data_axis,))


def _check_mesh(mesh, data_axis: str) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
    if data_axis not in mesh.axis_names:
        raise ValueError(f"`data_axis` {data_axis!r} is not an axis of the mesh {mesh.axis_names}.")


def fsdp_sharding(tree, mesh: Mesh, *, data_axis: str = "data", min_size: int = 1024):
    """FSDP shardings of `tree` (e.g. a `TrainState`): each array split over `data_axis`.

    An array of shape `(d_1, ..., d_k)` is split along its largest `d_i` divisible by the
    axis size `N` (the first such one on ties), so each device holds a `d_i / N` slice;
    arrays with fewer than `min_size` elements, or with no divisible dimension (scalars such
    as the step and Adam's count, odd-sized vectors), are replicated. Optimiser moments have
    the shapes of the parameters and get the same split.

    Args:
        tree: a pytree of arrays (or `jax.ShapeDtypeStruct`s).
        mesh: the mesh; `data_axis` must be one of its axes.
        min_size: the smallest array (in elements) that is split; splitting a smaller one
            saves less memory than its collectives cost.

    Returns:
        A pytree of `NamedSharding` with the structure of `tree`, for `jax.device_put` and
        `make_train_step(..., state_sharding=...)`.
    """
    _check_mesh(mesh, data_axis)
    min_size = check_positive_int(min_size, "min_size")
    num_shards = mesh.shape[data_axis]

    def spec(leaf) -> NamedSharding:
        shape = np.shape(leaf)
        dims = [i for i, d in enumerate(shape) if d % num_shards == 0]
        if math.prod(shape) < min_size or not dims:
            return NamedSharding(mesh, PartitionSpec())
        split = max(dims, key=lambda i: shape[i])
        axes = [data_axis if i == split else None for i in range(len(shape))]
        return NamedSharding(mesh, PartitionSpec(*axes))

    return jax.tree.map(spec, tree)


def replicate(tree, mesh: Mesh):
    """Place every leaf of `tree` (e.g. a `TrainState`) on every device of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch, mesh: Mesh, *, data_axis: str = "data"):
    """Shard every leaf of `batch` along its leading axis over `data_axis` of `mesh`.

    Each process passes its local slice of the global batch (single process: the whole
    batch); the leading size must be divisible by the number of this process's devices.
    """
    _check_mesh(mesh, data_axis)
    sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    num_local = len(mesh.local_devices)

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.ndim < 1 or x.shape[0] % num_local:
            raise ValueError(
                f"every leaf of `batch` needs a leading axis divisible by the {num_local} local "
                f"devices, got shape {x.shape}."
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, batch)


# ----------------------------------------------------------------------------- checkpoints


def state_digest(state) -> str:
    """sha256 (hex) of every array of `state`: each leaf's dtype, shape and bytes, in leaf order.

    The digest is of the global arrays, whatever their sharding: replicated arrays are read
    from one local copy, and arrays split across hosts (multi-host FSDP) are all-gathered one
    at a time (`multihost_utils.process_allgather`), a collective, so on several hosts every
    process must call it, as it does in `Checkpointer.save` and `restore`.
    """
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        if isinstance(leaf, jax.Array) and leaf.is_fully_replicated:
            leaf = leaf.addressable_data(0)
        elif isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class Checkpointer:
    """Orbax checkpoints of a `TrainState` with a checksum: save every `save_interval_steps`,
    keep the last k, verify on restore.

    A thin wrapper over `orbax.checkpoint.CheckpointManager`. Saves are atomic: Orbax writes
    into `<step>.orbax-checkpoint-tmp-*` and renames it to `<step>` when complete, and
    ignores (and by default cleans up) temporary directories, so an interrupted save is never
    restored. Each save stores `state_digest(state)` (sha256 of the arrays) in the step's
    Orbax metadata, written into the temporary directory before the rename, so a visible
    checkpoint always carries its checksum; `restore` recomputes it from the restored arrays
    and refuses a mismatch. Errors are plain Python: `FileNotFoundError` for a missing
    directory or step, `ValueError` naming the checkpoint for a corrupt one (checksum
    mismatch, missing or unreadable files) or one that does not match `like`.

    Args:
        directory: the checkpoint root (one sub-directory per step).
        save_interval_steps: `save` writes only when `step % save_interval_steps == 0`
            (or `force=True`).
        max_to_keep: keep the latest `max_to_keep` steps (`None`: keep all).
        create: create `directory` if missing (`False` for read-only use).
        async_save: write in a background thread (`wait()` or `close()` to finish).

    Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        directory,
        *,
        save_interval_steps: int = 1,
        max_to_keep: int | None = None,
        create: bool = True,
        async_save: bool = False,
    ):
        self.directory = os.path.abspath(os.fspath(directory))
        save_interval_steps = check_positive_int(save_interval_steps, "save_interval_steps")
        if max_to_keep is not None:
            max_to_keep = check_positive_int(max_to_keep, "max_to_keep")
        if not create and not os.path.isdir(self.directory):
            raise FileNotFoundError(f"checkpoint directory {self.directory} does not exist.")
        policies = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policies.FixedIntervalPolicy(save_interval_steps),
            preservation_policy=policies.LatestN(max_to_keep),  # n=None keeps all
            create=create,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, state: TrainState, step: int | None = None, *, force: bool = False) -> bool:
        """Save `state` and its checksum under `step` (default `state.step`) if the interval
        says so; returns whether it saved."""
        if not isinstance(state, TrainState):
            raise TypeError(f"`state` must be a TrainState, got {type(state).__name__}.")
        step = int(state.step) if step is None else int(step)
        if not (force or self._manager.should_save(step)):
            return False
        return self._manager.save(
            step,
            args=ocp.args.StandardSave(state),
            custom_metadata={_DIGEST_KEY: state_digest(state)},
            force=True,
        )

    def all_steps(self) -> list[int]:
        """The saved (complete) steps, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, like: TrainState, step: int | None = None) -> TrainState:
        """The state saved at `step` (default: the latest), with the structure, shapes, dtypes
        and shardings of `like` (e.g. a freshly created state), after checking its checksum."""
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}.")
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; available: {steps}."
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        path = os.path.join(self.directory, str(step))
        missing = [f for f in _REQUIRED_FILES if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise ValueError(
                f"the checkpoint at {path} is incomplete: {', '.join(missing)} missing."
            )
        try:
            stored = (self._manager.metadata(step).custom_metadata or {}).get(_DIGEST_KEY)
            state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:
            raise ValueError(
                f"could not restore the checkpoint at {path}: it is corrupt or does not match "
                f"`like` ({type(err).__name__}: {str(err)[:500]})."
            ) from err
        if stored is None:
            raise ValueError(
                f"the checkpoint at {path} has no checksum (written by an older diffjax?); "
                "refusing to restore it unverified."
            )
        if state_digest(state) != stored:
            raise ValueError(
                f"the checkpoint at {path} is corrupt: the sha256 of its arrays does not match "
                "the checksum saved with it."
            )
        return state

    def restore_newest_valid(self, like: TrainState) -> tuple[int, TrainState]:
        """`(step, state)` of the newest checkpoint that restores and verifies; each newer one
        that does not is skipped with a warning saying why. `ValueError` when none does."""
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}.")
        reasons = []
        for step in reversed(steps):
            try:
                return step, self.restore(like, step)
            except ValueError as err:
                reasons.append(str(err).splitlines()[0])
                warnings.warn(f"skipping checkpoint {step}: {reasons[-1]}", stacklevel=2)
        raise ValueError(
            f"no checkpoint in {self.directory} could be restored; newest: {reasons[0]}"
        )

    def wait(self) -> None:
        """Block until pending (async) saves are written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def restore_latest(directory, like: TrainState) -> TrainState:
    """The newest checkpoint in `directory` that verifies, restored like `like`; newer ones
    that fail are skipped with a warning (`Checkpointer.restore_newest_valid`)."""
    with Checkpointer(directory, create=False) as ckpt:
        return ckpt.restore_newest_valid(like)[1]
