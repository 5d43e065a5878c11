"""vivit-lens compare: two studies (a ViViT and a VideoMAE) side by side, every figure the study's own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vivit_lens import analysis
from vivit_lens.cli import main
from vivit_lens.study.compare import StudyFolderError, compare_studies, compare_tables, load_study
from vivit_lens.study.study_report import write_study
from vivit_lens.train import TrainConfig, init_weights_, new_model

SMALL = dict(frames=8, size=32, tubelet=(2, 16, 16), hidden=32, layers=2, heads=2)


def _study(arch: str, folder, seed: int) -> dict:
    model = init_weights_(new_model(TrainConfig(arch=arch, **SMALL)), torch.Generator().manual_seed(seed), 0.3)
    pairs = {a: analysis.generate_pairs(model, a, 4, seed=0) for a in ("bowling", "golf_putt")}
    st = analysis.study(model, pairs, n_boot=50, progress=False, k_folds=2)
    st["meta"] = analysis.provenance(model, f"random-{arch}", command=["vivit-lens", "study", "--model", arch])
    write_study(st, folder, formats=("json",))
    return json.loads((folder / "results.json").read_text())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    out = {}
    for i, arch in enumerate(("vivit", "videomae")):
        out[arch] = root / arch
        _study(arch, out[arch], seed=i)
    return out


def test_every_figure_is_the_studys_own(folders):
    studies = {name: load_study(f) for name, f in folders.items()}
    cmp = compare_studies(studies)
    assert set(cmp["domains"]) == {"bowling", "golf_putt"} and set(cmp["models"]) == {"vivit", "videomae"}
    assert cmp["models"]["videomae"]["architecture"] == "VideoMAEForVideoClassification"
    for dom, models in cmp["domains"].items():
        for name, v in models.items():
            st = studies[name]
            ci = st["domains"][dom]["ci"]
            assert np.allclose(np.asarray(v["attention_recovery"])[:, 0], ci["attention_recovery"]["mean"])
            assert np.allclose(np.asarray(v["mlp_recovery"])[:, 1], ci["mlp_recovery"]["lo"])
            assert np.allclose(v["head_recovery"], ci["head_recovery"]["mean"])
            recs = st["probe"][dom]["records"]
            best = max(recs, key=lambda r: r["test"])  # the best layer, found here from the records
            assert v["probe"]["best"][0] == pytest.approx(best["test"])
            head = np.abs(np.asarray(ci["head_recovery"]["mean"]))
            assert (v["top_head"]["layer"], v["top_head"]["head"]) == np.unravel_index(head.argmax(), head.shape)
            assert v["n_pairs"] == len(st["domains"][dom]["per_pair"]) == 4
    rows = compare_tables(cmp)
    assert len(rows["probe"]) == 2 * 2 * 2 and len(rows["blocks"]) == 2 * 2 * 2 * 2  # domains x models x layers


def test_cli_writes_the_report_and_refuses_bad_folders_in_one_line(folders, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(folders["vivit"]), str(folders["videomae"]), "--out", str(out),
                 "--format", "html,json,csv", "--no-progress"]) == 0  # fmt: skip
    html = (out / "report.html").read_text()
    assert "VideoMAEForVideoClassification" in html and "VivitForVideoClassification" in html and html.count("<img") == 3
    assert json.loads((out / "results.json").read_text())["models"].keys() == {"vivit", "videomae"}
    assert (out / "csv" / "probe.csv").is_file() and (out / "figures" / "compare_heads.png").is_file()
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    for argv in (["compare", str(folders["vivit"])],  # one study is no comparison
                 ["compare", str(folders["vivit"]), str(tmp_path / "missing")],
                 ["compare", str(folders["vivit"]), str(tmp_path / "empty")]):
        assert main([*argv, "--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vivit-lens compare: error:") and "Traceback" not in err[0], err
    assert not (tmp_path / "never").exists()


def test_studies_without_a_shared_domain_or_with_an_analyze_result_are_refused(folders, tmp_path):
    st = load_study(folders["vivit"])
    other = {**st, "domains": {"juggling": st["domains"]["bowling"]}, "probe": {}}
    with pytest.raises(ValueError, match="share no domain"):
        compare_studies({"a": st, "b": other})
    (tmp_path / "an").mkdir()
    (tmp_path / "an" / "results.json").write_text(json.dumps({"top5": []}))
    with pytest.raises(StudyFolderError, match="analyze"):
        load_study(tmp_path / "an")


def test_findings_words_follow_the_numbers():
    """The findings say 'hidden' / 'present' only when the figures say so: the same top-1 on >= 95% of pairs, a
    probe whose CI lies above chance and that reads >= 0.7; otherwise they say the opposite, or 'weakly'."""
    from vivit_lens.study.results import findings_lines

    def record(same, test, lo):
        best = {"test": test, "test_lo": lo, "test_hi": test + 0.03, "control": 0.5}
        causal = {"n_pairs": 10, "attention_recovery_by_layer": [[1.0, 0.0, 2.0]], "mlp_recovery_by_layer": [[1.0, 0.0, 2.0]],
                  "strongest_head": {"layer": 0, "head": 0, "recovery": [1.0, 0.0, 2.0]},
                  "head_most_on_region": {"layer": 0, "head": 0, "mass_over_uniform": [1.0, 0.9, 1.1]}}
        hidden = {"same_top1_fraction": same, "same_top1_ci": [same, same], "n_pairs": 10, "action": "a",
                  "action_accuracy": 1.0}
        return {"domains": {"a": {"hidden": hidden, "present": {"best": best, "best_layer": 0, "k": 5, "n_pairs": 10},
                                  "causal": causal}}}

    assert "hidden from the label" in findings_lines(record(0.95, 0.85, 0.81))[0]
    assert "not hidden from the label" in findings_lines(record(0.90, 0.85, 0.81))[0]
    assert "and present in the [CLS]" in findings_lines(record(1.0, 0.85, 0.81))[0]
    assert "only weakly present in the [CLS]" in findings_lines(record(1.0, 0.575, 0.55))[0]
    assert "not found in the [CLS]" in findings_lines(record(1.0, 0.53, 0.49))[0]
