"""The package layout: every module's old flat name is its new home's module object, and no module is too long."""

import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import vivit_lens
from vivit_lens import _aliases

PACKAGE = Path(vivit_lens.__file__).resolve().parent
MAX_LINES = 800
STAYED = {"vivit_lens.train", "vivit_lens.synthetic"}  # not moved: still at the top level


@pytest.mark.parametrize("old", sorted(_aliases.MOVED))
def test_old_name_is_the_new_module(old):
    new = _aliases.MOVED[old]
    mod = importlib.import_module(old)
    assert mod is importlib.import_module(new) is sys.modules[old] is sys.modules[new]
    assert mod.__name__ == new and mod.__spec__.name == new, "the module keeps its own name and spec"
    assert getattr(vivit_lens, old.rpartition(".")[2]) is mod, "and is the package's attribute of the old name"
    assert Path(mod.__file__).resolve() == PACKAGE / (new.removeprefix("vivit_lens.").replace(".", "/") + ".py")


def test_every_module_is_listed():
    """Every module of the package is at its place in the layout; the old names are exactly the moved modules."""
    found = {".".join(("vivit_lens", *p.relative_to(PACKAGE).with_suffix("").parts))
             for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}  # fmt: skip
    assert STAYED | {"vivit_lens._aliases"} | set(_aliases.MOVED.values()) | {
        "vivit_lens.study.pairs", "vivit_lens.study.pair_analysis", "vivit_lens.study.aggregate",
        "vivit_lens.study.results", "vivit_lens.study.compare"} == found  # new modules, with no old name  # fmt: skip
    assert not {old.rpartition(".")[2] for old in _aliases.MOVED} & {p.stem for p in PACKAGE.glob("*.py")}


def test_no_module_is_too_long():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}  # fmt: skip
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_old_import_forms():
    from vivit_lens import analysis, cli, model
    from vivit_lens.analysis import analyze_pair, bootstrap_ci, study
    from vivit_lens.cache import ActivationCache
    from vivit_lens.interp import probes
    from vivit_lens.study import aggregate, pair_analysis

    assert ActivationCache is vivit_lens.ActivationCache and model.HookedViViT is vivit_lens.HookedViViT
    assert analyze_pair is pair_analysis.analyze_pair and study is aggregate.study
    assert bootstrap_ci is probes.bootstrap_ci and cli.main is importlib.import_module("vivit_lens.study.cli").main


def test_monkeypatching_an_old_name_reaches_the_package(monkeypatch):
    """What the CLI looks up at call time (`from vivit_lens.study import analysis; analysis.load_pair(...)`) is
    what a test sets on `vivit_lens.analysis`."""
    import vivit_lens.analysis

    monkeypatch.setattr(vivit_lens.analysis, "load_pair", lambda *a: "patched")
    from vivit_lens.study import analysis

    assert analysis.load_pair() == "patched"


def test_pickles_name_the_new_home_and_old_pickles_load():
    from vivit_lens.analysis import StudyPair
    from vivit_lens.models.config import ViViTConfig

    job = StudyPair(None, None, "cls", 4)
    data = pickle.dumps(job)
    assert b"vivit_lens.study.aggregate" in data and pickle.loads(data) == job
    cfg = ViViTConfig()
    old = pickle.dumps(cfg, protocol=0).replace(b"vivit_lens.models.config", b"vivit_lens.config")  # pre-move pickle
    assert b"vivit_lens.config" in old and pickle.loads(old) == cfg


@pytest.mark.parametrize("module", ["vivit_lens.cli", "vivit_lens.study.cli"])
def test_python_m_cli(module, tmp_path):
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", module, "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and "usage: vivit-lens" in proc.stdout, proc.stderr


def test_old_names_in_a_fresh_interpreter(tmp_path):
    """Before anything else is imported: `vivit_lens.assets` is the module, not the data folder beside it."""
    code = ("import vivit_lens.assets as a, vivit_lens.io.assets as b, vivit_lens.model as m; "
            "assert a is b and a.tiny_model_path().is_dir(), a; print(m.__name__)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "vivit_lens.models.vivit", proc.stderr
