"""The module names from before the package was split into subpackages, kept as aliases of the moved modules.

    import vivit_lens.model                       # the module vivit_lens.models.vivit, the same object
    from vivit_lens.cache import ActivationCache  # vivit_lens.interp.cache
    from vivit_lens import analysis               # vivit_lens.study.analysis

An old name is not a copy or a star-import shim: importing it gives the module object of its new home (also in
`sys.modules` under the old name), so `monkeypatch.setattr(vivit_lens.analysis, ...)` changes what the package
itself calls. A finder at the front of `sys.meta_path` resolves the old names on first import (nothing is
imported before it is asked for). `python -m vivit_lens.cli` (or `.assets`) runs the new module's code as
`__main__`. Pickles name the new homes (`__module__`); pickles written before the move import through the aliases.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

# old name -> new home (every module of vivit_lens/ before the split, but train.py and synthetic.py, which stay)
MOVED: dict[str, str] = {
    **{f"vivit_lens.{m}": f"vivit_lens.models.{m}" for m in (
        "auto", "components", "config", "convert", "grid", "hooks", "loading", "placement", "utils", "videomae",
        "videomae_config", "videomae_convert")},
    "vivit_lens.model": "vivit_lens.models.vivit",
    **{f"vivit_lens.{m}": f"vivit_lens.interp.{m}" for m in (
        "ablation", "attribution", "cache", "cache_dla", "generic_patching", "graph", "measure", "memory", "metrics",
        "patching", "paths", "probes")},
    **{f"vivit_lens.{m}": f"vivit_lens.io.{m}" for m in ("assets", "atomic", "video")},
    **{f"vivit_lens.{m}": f"vivit_lens.study.{m}" for m in (
        "analysis", "cli", "distributed", "interactive", "paper", "plots", "report", "study_report", "summary",
        "tables")},
}  # fmt: skip


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the module of its new home (imported if it is not yet)."""

    def __init__(self, target: str):
        self.target = target
        self.target_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.target_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system has just set module.__spec__ to the old name's spec; give the module its own back
        # (importlib.reload, pickle and inspect read it). Nothing runs: the module was executed under its new name.
        module.__spec__ = self.target_spec

    # runpy (`python -m vivit_lens.cli`) asks the old name's loader for the code that it runs as __main__
    def get_code(self, fullname: str):
        spec = importlib.util.find_spec(self.target)
        return spec.loader.get_code(self.target)

    def is_package(self, fullname: str) -> bool:
        return False


class AliasFinder(importlib.abc.MetaPathFinder):
    """Finds the old module names of `MOVED`. It is first on `sys.meta_path`, so that an old name is never taken
    for something else first (`vivit_lens/assets/`, the data folder, would be a namespace package)."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        real = sys.modules[new].__spec__ if new in sys.modules else importlib.util.find_spec(new)
        spec = importlib.machinery.ModuleSpec(fullname, _AliasLoader(new), origin=real.origin)
        spec.has_location = real.has_location  # runpy's __file__ (`python -m vivit_lens.assets` finds assets/ by it)
        return spec


def install() -> None:
    """Put the finder first on `sys.meta_path` (once)."""
    if not any(isinstance(f, AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, AliasFinder())


def resolve(package: ModuleType, name: str) -> ModuleType:
    """`vivit_lens.<old name>` as an attribute before anything imported it (the package's `__getattr__`)."""
    full = f"{package.__name__}.{name}"
    if full not in MOVED:
        raise AttributeError(f"module {package.__name__!r} has no attribute {name!r}")
    return importlib.import_module(full)


install()  # on import: vivit_lens/__init__.py imports this module before anything else
