"""JAX's persistent compilation cache for scripts and notebooks: a second run compiles nothing."""

from __future__ import annotations

import os

import jax

__all__ = ["CACHE_ENV", "enable_compilation_cache"]

CACHE_ENV = "DIFFJAX_COMPILATION_CACHE"
"""The environment variable naming the cache directory (`off` turns the cache off)."""


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache; returns the directory (`None`: off).

    The directory is `directory`, else `$DIFFJAX_COMPILATION_CACHE` (`off` or empty turns the
    cache off), else `$XDG_CACHE_HOME/diffjax/jax` (`~/.cache/diffjax/jax`). Every program is
    cached, however fast it compiled (JAX's default keeps only those over 1 s, which leaves
    most of a small run's compilations out). Call it before the first compilation.
    """
    if directory is None:
        directory = os.environ.get(CACHE_ENV)
    if directory is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        directory = os.path.join(base, "diffjax", "jax")
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"`directory` must be a path, got {type(directory).__name__}.")
    directory = os.fspath(directory)
    if directory.strip().lower() in ("", "off", "0", "none"):
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
