"""The paper's analysis of a minimal pair as one library call, and the same measurements over many pairs.

    pair = load_pair(model, "strike.mp4", "gutter.mp4")            # checks, preprocesses, finds the region
    res = analyze_pair(model, pair.clean, pair.corrupt, region=pair.region)   # a JSON-ready dict of every number
    st = study(model, {"bowling": generate_pairs(model, "bowling", 20)})      # means with 95% bootstrap CIs

`analyze_pair` runs, on one clean (success) / corrupt (failure) pair: top-k predictions, the
per-layer L2 norm of the activation delta (the "amplification cascade"), direct logit attribution
(per component, per head, per source token), [CLS] attention of the strongest heads, region
ablation (pixels and tokens, the paper's Table 1), activation patching of every attention and MLP
block and of every head, scored as % of the clean - corrupt signal recovered (the paper's Table 2),
path patching (heads into the MLPs that compose the signal; direct paths to the final residual),
and attribution patching compared with the exact numbers. Every number comes from the public
APIs of `patching`, `paths`, `attribution`, `ablation`, `measure` and `ActivationCache`.

The analysis is one namespace (`vivit_lens.analysis`, the same module as `vivit_lens.study.analysis`) over four
modules: `pairs` (inputs and the outcome region), `pair_analysis` (`analyze_pair` and its steps),
`aggregate` (`study`) and `results` (definitions, provenance, JSON). `bootstrap_ci` lives in
`vivit_lens.interp.probes`, whose accuracies it also bootstraps. Callers that look a function up here at call time
(the CLI does: `analysis.analyze_pair(...)`) see a replacement set on this module; the modules themselves call each
other directly.
"""

from vivit_lens.interp.probes import bootstrap_ci
from vivit_lens.study.aggregate import PROBE_CI_HALF_WIDTH as PROBE_CI_HALF_WIDTH
from vivit_lens.study.aggregate import StudyPair as StudyPair
from vivit_lens.study.aggregate import study
from vivit_lens.study.pair_analysis import STEPS, analyze_pair
from vivit_lens.study.pair_analysis import STUDY_STEPS as STUDY_STEPS
from vivit_lens.study.pairs import (
    PairError, PairInput, Region, display_frames, generate_pairs, load_pair, region_from_difference, region_from_spec,
    resolve_class, spec_xyxy,
)  # fmt: skip
from vivit_lens.study.results import (
    ANALYSIS_TERMS, DEFINITIONS, RECOVERY_FORMULA, STUDY_TERMS, definitions, findings_lines, jsonable, model_findings,
    provenance,
)  # fmt: skip

__all__ = [
    "ANALYSIS_TERMS", "DEFINITIONS", "PairError", "PairInput", "RECOVERY_FORMULA", "Region", "STEPS", "analyze_pair",
    "bootstrap_ci", "display_frames", "findings_lines", "generate_pairs", "jsonable", "load_pair", "model_findings",
    "provenance", "region_from_difference", "region_from_spec", "resolve_class", "spec_xyxy", "study", "STUDY_TERMS",
    "definitions",
]  # fmt: skip
