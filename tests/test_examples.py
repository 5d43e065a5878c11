"""The example scripts run, as a user runs them (subprocesses), on a random checkpoint and on the shipped model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_analysis import make_checkpoint
from vivit_lens import synthetic

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = ("quickstart.py", "outcome_circuit.py", "path_patching.py")
EXPECT = {  # what each script must print: the paper's steps
    "quickstart.py": ("top-5", "||resid_clean - resid_corrupt||", "DLA of the clean clip", "[CLS] query"),
    "outcome_circuit.py": ("Table 1", "| Rank | Original (logit)", "Table 2", "attention      MLP"),
    "path_patching.py": ("direct paths to the final [CLS]", "heads -> MLP", "attribution vs exact", "circuit with"),
}


def run_example(script: str, *args, timeout: int = 300) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for text in EXPECT[script]:
        assert text in proc.stdout, (text, proc.stdout[-2000:])
    return proc.stdout


@pytest.fixture(scope="module")
def random_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    ckpt = make_checkpoint(root / "ckpt", seed=4)
    synthetic.write_pair(root / "pair", "bowling", seed=2, frames=8, size=32)
    return ckpt, root / "pair" / "clean.mp4", root / "pair" / "corrupt.mp4"


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_on_any_checkpoint(script, random_inputs, tmp_path):
    extra = [tmp_path / "circuit.png"] if script == "path_patching.py" else []
    out = run_example(script, *random_inputs, *extra)
    if extra:
        assert extra[0].read_bytes()[:4] == b"\x89PNG" and str(extra[0]) in out
    if script == "outcome_circuit.py":
        assert "outcome region: " in out and "the region's pixels set to 0" in out, "the spec.json region is used"


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_on_the_shipped_model(script):
    out = run_example(script, timeout=600)
    if script == "quickstart.py":
        assert "class analysed: 'bowling'" in out
