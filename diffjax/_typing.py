"""Type aliases of the public signatures (jaxtyping). The test suite checks every call against
them with beartype (`--jaxtyping-packages=diffjax,beartype.beartype`, as diffrax does)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

Key = PRNGKeyArray  # a typed key (jax.random.key) or a legacy uint32[2] PRNGKey
Shape = Sequence[int | np.integer]  # [B, *event]
Scalar = int | float | np.number | np.ndarray | Array  # a real scalar; may be a traced array
Batch = Float[Array, "B *event"]  # a batch of states
Values = ArrayLike | Sequence  # host-side values (save times, noise levels, betas): arrays or lists
Int = int | np.integer  # a count (steps, orders): Python or NumPy integer
DType = str | type | np.dtype | None  # a compute dtype: "bfloat16", jnp.bfloat16, np.dtype(...)
