"""Constructor arguments recorded on a network, so that it can be rebuilt from them.

As diffusers' `register_to_config`: `@records_config` on an NNX module class records the
arguments of every construction (defaults filled in, `rngs` left out) and exposes them as
`module.config`, a dict of JSON values; `type(module)(**module.config, rngs=...)` builds the
same architecture. `diffjax.save_pretrained` writes it into `model.json`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import numpy as np

__all__ = ["records_config"]


def _frozen(value, name: str):
    """A constructor argument as a hashable JSON value (sequences become tuples)."""
    if isinstance(value, np.dtype) or (isinstance(value, type) and hasattr(value, "dtype")):
        return np.dtype(value).name  # a dtype (`jnp.bfloat16`) is recorded by its name
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Sequence):
        return tuple(_frozen(v, name) for v in value)
    raise TypeError(
        f"`{name}` = {value!r} cannot be recorded in the network's config: constructor "
        "arguments must be numbers, strings, None or sequences of them."
    )


def records_config(cls):
    """Class decorator: `cls(...)` records its arguments (all but `rngs`) as `module.config`.

    They are stored as a sorted tuple of `(name, value)` pairs, a static attribute, so the
    module's graph definition stays hashable; `config` returns them as a dict.
    """
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        names = list(bound.arguments)[1:]
        self._config = tuple(
            sorted((n, _frozen(bound.arguments[n], n)) for n in names if n != "rngs")
        )
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    cls.config = property(
        lambda self: dict(self._config),
        doc="The constructor arguments (without `rngs`) as a dict; see `records_config`.",
    )
    return cls
