"""Two JAX processes on one machine (2 CPU devices each, `jax.distributed` over localhost)
resume a checkpoint written on one device into an FSDP state over the 4-device global mesh,
each read its own part of the shards and train, and write a checkpoint with the checksum of
the global arrays, which restores on both and on a single device; the parameters equal a
1-device run on the same global batches."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np

import diffjax as dj
from diffjax import pipeline, training

STEPS, LOCAL_BATCH, N = 6, 32, 1000

SETUP = textwrap.dedent(
    """
    import jax, numpy as np, optax
    from flax import nnx
    import diffjax as dj
    from diffjax import losses, nets, training

    sde = dj.VPSDE()
    apply, params = nets.split(nets.MLP(2, hidden=(32, 32), embed_dim=16, rngs=nnx.Rngs(0)))
    loss_fn = lambda p, batch, key: losses.dsm(p, apply, key, batch["x"], sde)
    opt = optax.adam(1e-2)
    fresh = lambda: training.create_train_state(params, opt, ema_decay=0.9)
    """
)

WORKER = textwrap.dedent(
    """
    import sys
    import jax

    shards, ckpt_dir, out, port, pid, steps, local_batch = sys.argv[1:8]
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(pid))
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)
    """
) + SETUP + textwrap.dedent(
    """
    from diffjax import pipeline

    mesh = training.make_mesh()
    sharding = training.fsdp_sharding(fresh(), mesh, min_size=32)
    with training.Checkpointer(ckpt_dir) as ckpt:  # written on one device; checksum verified
        state = ckpt.restore(jax.device_put(fresh(), sharding))
    assert int(state.step) == 1
    assert any(not a.is_fully_addressable for a in jax.tree.leaves(state))  # split over hosts
    step = training.make_train_step(loss_fn, opt, ema_decay=0.9, mesh=mesh, state_sharding=sharding)
    loader = pipeline.make_loader(shards, batch_size=int(local_batch), seed=0)  # own part
    seen = []
    for i in range(int(steps)):
        local = next(loader)
        seen.append(local["y"])
        batch = training.shard_batch({"x": local["x"]}, mesh)
        state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(2), i))
        assert int(metrics["nonfinite"]) == 0
    assert int(state.step) == 1 + int(steps)
    digest = training.state_digest(state)
    with training.Checkpointer(ckpt_dir) as ckpt:
        ckpt.save(state, force=True)
        restored = ckpt.restore(jax.device_put(fresh(), sharding))  # verifies the checksum
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        assert a.sharding == b.sharding
        for u, v in zip(a.addressable_shards, b.addressable_shards, strict=True):
            np.testing.assert_array_equal(u.data, v.data)
    np.save(out, np.concatenate(seen))
    print("DIGEST", digest)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_fsdp_resume_train_checkpoint_and_restore_on_one_device(tmp_path):
    """A one-step state saved on one device restores (checksum verified) into the FSDP state
    of both processes; they report the same checksum of the global (split) state after 6
    steps, each read a disjoint part of the shards (examples 0..499 and 500..999), the
    checkpoint they wrote restores (checksum verified) on one device, and it equals 6 more
    Adam steps on 1 device over the concatenated local batches to rtol 1e-5 of each array's
    largest value."""
    x = np.asarray(dj.data.eight_gaussians(jax.random.key(0), N))
    shards = pipeline.write_shards({"x": x, "y": np.arange(N)}, tmp_path / "s", shard_size=300)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port, ckpt = _free_port(), str(tmp_path / "ckpt")
    scope: dict = {}
    exec(SETUP, scope)
    step = training.make_train_step(scope["loss_fn"], scope["opt"], ema_decay=0.9)
    first, _ = step(scope["fresh"](), {"x": x[:64]}, jax.random.key(9))
    with training.Checkpointer(ckpt) as c:
        c.save(first)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    env.pop("JAX_PLATFORMS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), shards, ckpt, str(tmp_path / f"seen{pid}.npy"),
             str(port), str(pid), str(STEPS), str(LOCAL_BATCH)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        for pid in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out + err[-3000:]
    digests = {line.split()[1] for out, _ in outs for line in out.splitlines() if "DIGEST" in line}
    assert len(digests) == 1, outs

    seen = [np.load(tmp_path / f"seen{pid}.npy").reshape(STEPS, LOCAL_BATCH) for pid in (0, 1)]
    assert set(seen[0].ravel()) <= set(range(500)) and set(seen[1].ravel()) <= set(range(500, N))

    with training.Checkpointer(ckpt, create=False) as c:
        assert c.all_steps() == [1, 1 + STEPS]
        restored = c.restore(scope["fresh"]())  # one device; the checksum must match
    assert training.state_digest(restored) == digests.pop()

    state, start = first, jax.device_get(first.params)  # the step donates its state
    for i in range(STEPS):
        batch = {"x": x[np.concatenate([seen[0][i], seen[1][i]])]}
        state, _ = step(state, batch, jax.random.fold_in(jax.random.key(2), i))
    moved = max(float(np.max(np.abs(a - b))) for a, b in
                zip(jax.tree.leaves(state.params), jax.tree.leaves(start), strict=True))  # fmt: skip
    assert moved > 1e-2
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.max(np.abs(a)))
