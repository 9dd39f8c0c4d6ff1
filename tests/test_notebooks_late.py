"""The second half of the notebooks (see test_notebooks.py)."""

from __future__ import annotations

import pytest
from test_notebooks import NOTEBOOKS, execute

SECOND_HALF = NOTEBOOKS[4:]


@pytest.mark.parametrize("path", SECOND_HALF, ids=[p.stem for p in SECOND_HALF])
def test_notebook_executes(path, monkeypatch):
    execute(path, monkeypatch)
