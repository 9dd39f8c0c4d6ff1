"""The API site (`mkdocs.yml`, `docs/`) builds in strict mode, has a page for every public
module and an entry for every public name, and strict mode rejects a broken cross-reference."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys

import pytest

import diffjax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
MODULES = sorted(m.name for m in pkgutil.iter_modules(diffjax.__path__) if not m.name.startswith("_"))


def mkdocs_build(config: str, site: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", config, "-d", site]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def public_names(module) -> list[str]:
    """`__all__`, or else the public functions, classes and constants defined in the module."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name for name, obj in vars(module).items() if not name.startswith("_")
        and (getattr(obj, "__module__", None) == module.__name__ if inspect.isfunction(obj)
             or inspect.isclass(obj) else name.isupper())
    ]  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> str:
    site = str(tmp_path_factory.mktemp("site"))
    out = mkdocs_build(os.path.join(ROOT, "mkdocs.yml"), site)
    assert out.returncode == 0, out.stderr[-3000:]
    return site


def test_modules_cover_the_layout():
    assert {"losses", "model", "nets", "samplers", "training"} <= set(MODULES), MODULES


@pytest.mark.parametrize("name", MODULES)
def test_every_public_name_has_an_entry(site, name):
    page = os.path.join(site, "api", name, "index.html")
    assert os.path.isfile(page), f"no API page for diffjax.{name} (docs/api/{name}.md)"
    ids = set(re.findall(r'id="(diffjax\.[\w.]+)"', open(page).read()))
    names = public_names(importlib.import_module(f"diffjax.{name}"))
    assert names
    missing = [n for n in names if f"diffjax.{name}.{n}" not in ids]
    assert not missing, f"docs/api/{name}.md renders no entry for {missing}"


def test_nav_has_the_notes(site):
    for page in ("index.html", "design/index.html", "lecture-notes-errata/index.html"):
        assert os.path.getsize(os.path.join(site, page)) > 0


def test_strict_rejects_a_broken_reference(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(
        "See [`ddpm`][diffjax.samplers.ddpm] and [`gone`][diffjax.samplers.no_such_sampler].\n\n"
        "::: diffjax.samplers.ddpm\n"
    )
    (tmp_path / "mkdocs.yml").write_text(
        "site_name: broken\nplugins:\n  - mkdocstrings:\n      handlers:\n        python:\n"
        f"          paths: [{ROOT!r}]\n"
    )
    out = mkdocs_build(str(tmp_path / "mkdocs.yml"), str(tmp_path / "site"))
    assert out.returncode != 0
    assert "diffjax.samplers.no_such_sampler" in out.stderr, out.stderr[-3000:]
