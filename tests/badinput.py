"""Bad-input tables: each row is a call that diffjax must refuse, naming the argument.

A row is a zero-argument callable that makes one bad call, the argument its message must name,
and the failure kind, which fixes the expected exception (a row may override it):

    type, key, integer, dtype  -> TypeError   (a str, None, a non-key, 2.0 for an int, complex)
    shape, range, nonfinite    -> ValueError  (wrong shape, out of range, NaN or inf)
    traced                     -> the run-time `eqx.error_if` error (under `jax.jit`)
    solver                     -> RuntimeError (a solve that ran out of `max_steps`)

`table_test(rows)` turns a table into a parametrised test. A concrete row runs twice: as the
test suite runs it (jaxtyping signatures checked by beartype) and as a user without beartype
runs it (`jaxtyping_disable`), so diffjax's own checks must catch it too. Each time the
exception must be of the expected type, name the argument (`` `name` `` or `'name'`, possibly
as `shape[0]`, `x.shape`, `drift(x, t)` or `kind='velocity'`), and be raised by diffjax (or the
signature checker), never by JAX, XLA, diffrax or Equinox internals. A traced row runs once,
unchecked, and only its message is checked (the error is raised by `eqx.error_if`'s callback).
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jaxtyping
import pytest

KINDS = {
    "type": TypeError,
    "key": TypeError,
    "integer": TypeError,
    "dtype": TypeError,
    "shape": ValueError,
    "range": ValueError,
    "nonfinite": ValueError,
    "traced": (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError),
    "solver": RuntimeError,
}
# Where a concrete row's exception may be raised: diffjax itself or the signature checker.
RAISERS = ("diffjax", "jaxtyping", "beartype")


class Row(NamedTuple):
    """One bad call: `call()` must raise `raises` (default: by `kind`) naming `arg`."""

    id: str
    call: Callable[[], object]
    arg: str
    kind: str
    raises: type | tuple[type, ...] | None = None


def _names(arg: str) -> re.Pattern:
    return re.compile(rf"[`']{re.escape(arg)}(\[\d+\]|\.\w+|\([^)]*\)|=[^`']*)*[`']")


def _raiser(err: BaseException) -> str:
    """The top-level package of the innermost frame of `err`'s traceback."""
    if isinstance(err, jaxtyping.TypeCheckError):  # raised with its checker's frames hidden
        return "jaxtyping"
    frames = traceback.extract_tb(err.__traceback__)
    for package in ("diffjax", "jaxtyping", "beartype"):
        if f"/{package}/" in frames[-1].filename:
            return package
    return frames[-1].filename


def check_row(row: Row, *, checked: bool) -> None:
    """Run `row` once, with or without the signature checker, and check what it raises."""
    if row.kind not in KINDS:
        raise ValueError(f"unknown kind {row.kind!r} in row {row.id}")
    expected = KINDS[row.kind] if row.raises is None else row.raises
    previous = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", not checked)
    try:
        with pytest.raises(expected) as info:
            jax.block_until_ready(row.call())
    finally:
        jaxtyping.config.update("jaxtyping_disable", previous)
    err = info.value
    message = str(err)
    assert _names(row.arg).search(message), (
        f"{type(err).__name__} does not name `{row.arg}`: {message[:400]}"
    )
    if row.kind != "traced":
        raiser = _raiser(err)
        assert raiser in RAISERS, (
            f"raw {type(err).__module__}.{type(err).__name__} raised in {raiser}: {message[:400]}"
        )


def table_test(rows: list[Row]) -> Callable:
    """A test parametrised over `rows` (and, for concrete rows, both checker modes)."""
    ids = [row.id for row in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate row ids: {sorted(i for i in ids if ids.count(i) > 1)}")
    params = [
        pytest.param(row, checked, id=f"{row.id}-{'checked' if checked else 'user'}")
        for row in rows
        for checked in ((False,) if row.kind == "traced" else (True, False))
    ]

    @pytest.mark.parametrize(("row", "checked"), params)
    def test(row: Row, checked: bool) -> None:
        check_row(row, checked=checked)

    return test
