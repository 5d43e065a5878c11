"""`vivit-lens`: the paper's analysis of a minimal pair (`analyze`) and over many pairs (`study`), from the shell.

The paper: Sai Chereddy, "Attention Gathers, MLPs Compose: A Causal Analysis of an Action-Outcome Circuit in
VideoViT" (arXiv:2603.11142, 2026); its Table 1 (region ablation), Table 2 (attention vs MLP patching) and
Figure 1 (the activation-delta cascade) are what the reports reproduce.

    vivit-lens analyze                                   # the shipped tiny model and bowling pair -> ./vivit_lens_report/
    vivit-lens analyze strike.mp4 gutter.mp4 --model google/vivit-b-16x2-kinetics400 --out out/
    vivit-lens study --pairs 20                          # bowling and golf_putt pairs, 95% bootstrap CIs
    vivit-lens study --model tiny_videomae --out study_mae           # the same on the shipped VideoMAE
    vivit-lens compare vivit_lens_study study_mae        # the two studies side by side -> ./vivit_lens_compare/

Exit codes: 0 done, 2 bad input (a one-line message on stderr, no traceback), 1 an unexpected error, 130
Ctrl-C and 143 SIGTERM (both leave no output behind).
The work is done by `vivit_lens.analysis` (numbers) and `vivit_lens.report` (files). Outputs are complete or
absent: they are written into a temporary folder beside `--out` and moved into place when finished; a
non-empty `--out` is replaced only with `--overwrite`, and only then. Progress bars go to stderr when it is a
terminal (one bar at a time, cleared when done; none into a log or pipe); `--quiet` prints nothing but errors.
Both commands end with a short summary of the headline numbers and where each output went. The memory guard (refusing runs that cannot fit before
computing them) is turned off with VIVIT_LENS_NO_MEMORY_GUARD=1.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT = 0, 1, 2
# Fewer analysed pairs than this per domain make the 95% bootstrap CIs meaningless (the spread of a handful).
MIN_PAIRS_FOR_CI = 10
DEFAULT_PAIRS = 20


class UsageError(ValueError):
    """Bad command-line input: reported as one line, exit code 2."""


class Terminated(BaseException):
    """SIGTERM (`kill`, `timeout`, a batch scheduler): raised in the main thread so that every `finally` runs and
    the temporary output folder is removed, as on Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM raises `Terminated` inside the block (main thread only; elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parser() -> argparse.ArgumentParser:
    from vivit_lens import __version__
    from vivit_lens.study import paper

    p = argparse.ArgumentParser(prog="vivit-lens", description="Mechanistic analysis of ViViT video classifiers "
                                "on outcome minimal pairs (clean = success clip, corrupt = failure clip), "
                                f"reproducing {paper.CITATION}: its Table 1, Table 2 and Figure 1.",
                                epilog="Environment: VIVIT_LENS_NO_MEMORY_GUARD=1 lets runs go that the memory guard "
                                       "would refuse as too large for the memory available; HF_HUB_OFFLINE=1 reads "
                                       "hub ids from the local Hugging Face cache only.")  # fmt: skip
    p.add_argument("--version", action="version", version=f"vivit-lens {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{analyze,study,compare,train}")
    sub.required = True

    def common(q: argparse.ArgumentParser, out_default: str) -> None:
        q.add_argument("--model", default=None,
                       help="checkpoint folder or hub id, ViViT or VideoMAE, or a shipped model: tiny_vivit (the "
                            "default) or tiny_videomae")  # fmt: skip
        q.add_argument("--out", default=out_default, help=f"output folder (default: {out_default})")
        q.add_argument("--overwrite", action="store_true",
                       help="replace a non-empty --out folder (only once the new output is complete)")
        q.add_argument("--class", dest="cls", default=None, metavar="NAME",
                       help="class for the logit measurements: a label or an index (default: the model's top "
                            "prediction on the clean clip)")  # fmt: skip
        q.add_argument("--signal-layer", type=int, default=None,
                       help="layer whose output residual carries the patching signal (default: the last)")
        q.add_argument("--signal-positions", choices=("readout", "cls", "all"), default="readout",
                       help="tokens of that residual the signal is read at: where the classifier reads ([CLS] on "
                            "ViViT, all tokens on a mean-pooling VideoMAE), cls, or all (default: readout)")
        q.add_argument("--batch-size", type=int, default=16, help="patched runs per forward pass (default: 16)")
        q.add_argument("--no-progress", action="store_true",
                       help="no progress bars (they are shown only when stderr is a terminal)")
        q.add_argument("--quiet", action="store_true", help="print nothing but errors")
        q.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:N or mps (default: cpu)")
        q.add_argument("--dtype", default="float32",
                       help="the model's float type: float32, bfloat16, float16 or float64 (default: float32)")
        q.add_argument("--format", dest="formats", default="html,json", metavar="LIST",
                       help="outputs, comma-separated from html (report.html + figures/*.png), json (results.json), "
                            "csv (csv/*.csv, tidy tables for pandas); default: html,json")  # fmt: skip

    a = sub.add_parser("analyze", help="analyse one clean/corrupt pair and write report.html + results.json",
                       description="Run the paper's analysis on one minimal pair (with no videos: the shipped "
                                   "bowling pair) and write report.html, results.json and figures/*.png: "
                                   "Table 1 (region ablation), Table 2 (attention vs MLP patching) and Figure 1 "
                                   f"(activation delta) of {paper.SHORT}, and the steps around them.")  # fmt: skip
    a.add_argument("clean", nargs="?", help="the success clip (e.g. strike.mp4)")
    a.add_argument("corrupt", nargs="?", help="the failure clip (e.g. gutter.mp4)")
    common(a, "vivit_lens_report")
    a.add_argument("--region", default=None, metavar="X0,Y0,X1,Y1",
                   help="outcome region for ablation, in model-input pixels, ends exclusive (default: the box in a "
                        "spec.json next to the videos, else the tokens where the clips differ most)")  # fmt: skip
    a.add_argument("--frames", default=None, metavar="A:B",
                   help="model-input frames [A, B) of the region (default with --region: all frames)")
    a.add_argument("--top-heads", type=int, default=4, help="heads shown with [CLS] attention (default: 4)")
    a.add_argument("--composers", type=int, default=3,
                   help="MLPs (largest recovery) whose head inputs are path-patched (default: 3)")

    s = sub.add_parser("study", help="the same measurements over many pairs, with bootstrap CIs and a held-out probe",
                       description="Generate N synthetic minimal pairs per action at the model's size (or read "
                                   "pairs from a CSV), run the per-pair measurements, and report means with 95% "
                                   "bootstrap confidence intervals and a per-layer outcome probe on held-out "
                                   "pairs.")  # fmt: skip
    common(s, "vivit_lens_study")
    s.add_argument("--pairs", type=int, default=None, help=f"generated pairs per action (default: {DEFAULT_PAIRS})")
    s.add_argument("--action", "--domain", dest="actions", action="append", default=None, metavar="ACTION",
                   help="action to generate pairs of (repeatable; default: bowling and golf_putt)")
    s.add_argument("--pairs-csv", default=None, metavar="FILE",
                   help="user pairs instead (not with --pairs or --action): a CSV with columns clean,corrupt (paths "
                        "relative to the CSV) and an optional column domain")  # fmt: skip
    s.add_argument("--seed", type=int, default=0, help="first pair seed, and the bootstrap and probe seed (default: 0)")
    s.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    s.add_argument("--probe-pairs", type=int, default=100,
                   help="generated pairs per action for the outcome probes and the hidden-outcome checks (forwards "
                        "only; the first --pairs of them are also analysed; default: 100, at which the probe's 95%% "
                        "CI is about +-0.08 or narrower)")  # fmt: skip
    s.add_argument("--folds", type=int, default=5, help="grouped k-fold over pairs for the probes (default: 5)")
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run the pairs and probe forwards on N Ray workers of a local Ray cluster, started and stopped "
                        "here, one model replica each (one GPU each when there are GPUs); needs pip install "
                        "'vivit_lens[distributed]'; results are the serial run's (bit for bit at the workers' thread "
                        "count, to float32 rounding at another)")  # fmt: skip
    s.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="use the existing Ray cluster at ADDR (HOST:PORT or auto) instead of a local one; --workers "
                        "then defaults to its GPUs, or else its CPUs")  # fmt: skip
    c = sub.add_parser("compare", help="put two or more studies side by side (e.g. ViViT and VideoMAE)",
                       description="Read the results.json of two or more `vivit-lens study` runs and write one report "
                                   "with their outcome probes, block and head recoveries side by side, each with its "
                                   "own N and 95% CIs. Nothing is recomputed.")  # fmt: skip
    c.add_argument("studies", nargs="+", metavar="STUDY_DIR", help="--out folders of vivit-lens study runs")
    c.add_argument("--names", default=None, metavar="LIST",
                   help="comma-separated names for the studies (default: each folder's name)")
    c.add_argument("--out", default="vivit_lens_compare", help="output folder (default: vivit_lens_compare)")
    c.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out folder (only once the new output is complete)")
    c.add_argument("--format", dest="formats", default="html,json", metavar="LIST",
                   help="outputs, comma-separated from html, json, csv (default: html,json)")
    c.add_argument("--no-progress", action="store_true", help="accepted for symmetry; compare draws no bars")
    c.add_argument("--quiet", action="store_true", help="print nothing but errors")
    from vivit_lens import train

    t = sub.add_parser("train", help="train a small ViViT or VideoMAE on the synthetic world",
                       description=train.__doc__.split("\n\n")[0] + " Writes an HF folder (config.json, "
                                   "model.safetensors, preprocessor_config.json) and training.json, the record of "
                                   "the run; the folder appears only when training is done.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    train.add_arguments(t)
    return p


# Inputs ------------------------------------------------------------------------------------------
def _shipped_model(name: str = "tiny_vivit") -> str:
    from vivit_lens.io.assets import tiny_model_path

    try:
        return str(tiny_model_path(name))
    except FileNotFoundError as e:
        raise UsageError(f"{e}; or pass --model FOLDER_OR_HUB_ID") from None


def _shipped_pair(action: str) -> tuple[str, str]:
    from vivit_lens.io.assets import pair_paths

    try:
        clean, corrupt, _spec = pair_paths(action)
    except ValueError as e:
        raise UsageError(f"{e}; pass CLEAN CORRUPT videos") from None
    return str(clean), str(corrupt)


def _load_model(name: str | None, args=None):
    """The model `--model` names: a shipped one (tiny_vivit, the default, or tiny_videomae), a folder or a hub id;
    its class from the checkpoint's model_type (vivit_lens.from_pretrained)."""
    from vivit_lens.io.assets import SHIPPED_MODELS
    from vivit_lens.models.auto import from_pretrained

    name = _shipped_model(name or "tiny_vivit") if name is None or name in SHIPPED_MODELS else name
    place = {"device": args.device, "dtype": args.dtype} if args is not None else {}
    try:
        return from_pretrained(name, **place), name
    except (OSError, ValueError) as e:  # not found, unreadable, not a ViViT, weights that do not fit
        shipped = "" if "/" in name or Path(name).exists() else f" (shipped models: {', '.join(SHIPPED_MODELS)})"
        raise UsageError(f"cannot load the model {name!r}: {e}{shipped}") from None


def _parse_region(model, region: str | None, frames: str | None):
    from vivit_lens.study.analysis import Region

    if region is None and frames is None:
        return None
    if region is None:
        h, w = model.cfg.image_size
        box = (0, 0, w, h)
    else:
        try:
            box = tuple(int(v) for v in region.split(","))
            assert len(box) == 4
        except (ValueError, AssertionError):
            raise UsageError(f"--region must be four integers X0,Y0,X1,Y1, got {region!r}") from None
    if frames is None:
        span = (0, model.cfg.num_frames)
    else:
        try:
            a, b = frames.split(":")
            span = (int(a) if a else 0, int(b) if b else model.cfg.num_frames)
        except ValueError:
            raise UsageError(f"--frames must be A:B (model-input frames, B exclusive), got {frames!r}") from None
    return Region.from_box(model, box, span, "--region/--frames")


def _resolve_class(model, name: str | None):
    from vivit_lens.study.analysis import resolve_class

    try:
        return resolve_class(model, name)
    except KeyError as e:
        raise UsageError(str(e.args[0])) from None


def _check_common(args) -> None:
    from vivit_lens.models.placement import PlacementError, parse_device, parse_dtype

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        args.device, args.dtype = parse_device(args.device), parse_dtype(args.dtype)
    except PlacementError as e:
        raise UsageError(f"{e}".replace("device ", "--device ", 1).replace("dtype ", "--dtype ", 1)) from None
    if args.device.type == "meta":
        raise UsageError("--device meta holds no values, so there is nothing to report; use cpu, cuda or mps")
    _check_formats(args)


def _check_formats(args) -> None:
    from vivit_lens.study.report import FORMATS

    formats = [f.strip() for f in str(args.formats).split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UsageError(f"--format must be a comma-separated list of {', '.join(FORMATS)}, got {args.formats!r}")
    args.formats = tuple(dict.fromkeys(formats))


def _output(args, *inputs):
    """The --out folder, validated before any compute (and its temporary sibling created)."""
    from vivit_lens.io.atomic import OutputFolder

    return OutputFolder(args.out, overwrite=args.overwrite, protect=[p for p in inputs if p])


WHAT = {"report": "report", "figures": "figures", "results": "results", "csv": "tables (csv)"}


def _write(out, write, log, t0: float, headline: list[str]) -> None:
    """`write(folder)` into the temporary folder, then move it into place; ends with the headline numbers and
    where each output went."""
    paths = {k: out.final(v) for k, v in write(out.tmp).items()}
    out.commit()
    lines = ["summary:", *(f"  {line}" for line in headline)]
    lines += [f"{WHAT[k] + ':':15s}{paths[k]}{'/' if k in ('figures', 'csv') else ''}" for k in WHAT if k in paths]
    lines.append(f"wrote them in {time.perf_counter() - t0:.1f} s")
    log("\n".join(lines))


def _check_signal_layer(model, layer: int | None) -> None:
    n = model.cfg.n_layers
    if layer is not None and not 0 <= layer < n:
        raise UsageError(f"--signal-layer must be in [0, {n - 1}] for this {n}-layer model, got {layer}")


# Commands ----------------------------------------------------------------------------------------
def cmd_analyze(args, log) -> int:
    _check_common(args)
    if (args.clean is None) != (args.corrupt is None):
        raise UsageError("give both CLEAN and CORRUPT videos, or neither (the shipped bowling pair)")
    if args.top_heads < 1 or args.composers < 0:
        raise UsageError("--top-heads must be >= 1 and --composers >= 0")
    t0 = time.perf_counter()
    clean_path, corrupt_path = (args.clean, args.corrupt) if args.clean else _shipped_pair("bowling")
    for p in (clean_path, corrupt_path):
        if not Path(p).is_file():
            raise UsageError(f"no such video file: {p}")
    out = _output(args, clean_path, corrupt_path, args.model)
    try:
        return _analyze(args, log, out, clean_path, corrupt_path, t0)
    finally:
        out.discard()  # a no-op once the output is in place; otherwise nothing half-written stays


def _analyze(args, log, out, clean_path: str, corrupt_path: str, t0: float) -> int:
    from vivit_lens.study import analysis, report
    from vivit_lens.study.summary import analysis_headline

    model, name = _load_model(args.model, args)
    _check_signal_layer(model, args.signal_layer)
    cls = _resolve_class(model, args.cls)
    pair = analysis.load_pair(model, clean_path, corrupt_path)
    region = _parse_region(model, args.region, args.frames) or pair.region
    log(f"model {name}: {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, {model.cfg.n_pos} tokens")
    res = analysis.analyze_pair(model, pair.clean, pair.corrupt, label=cls, region=region,
                                signal_layer=args.signal_layer, signal_positions=args.signal_positions,
                                top_heads=args.top_heads, n_composers=args.composers, batch_size=args.batch_size,
                                progress=args.progress)  # fmt: skip
    res["definitions"] = analysis.definitions("analysis")
    res["meta"] = analysis.provenance(model, name, inputs=pair.meta, command=["vivit-lens", *args.argv])
    res["timings_s"]["total_before_report"] = time.perf_counter() - t0
    frames = views = None
    if "html" in args.formats:
        from vivit_lens.study.interactive import analysis_views

        frames = analysis.display_frames(pair.clean, model.processor)
        views = analysis_views(model, pair.clean, pair.corrupt, analysis.jsonable(res))
    _write(out, lambda folder: report.write_analysis(res, folder, frames=frames, views=views, formats=args.formats,
                                                     progress=args.progress), log, t0, analysis_headline(res))
    return EXIT_OK


def _csv_rows(path: str) -> list[tuple[int, dict]]:
    """(line number, row) of every data row of a pairs CSV, each checked for its clean and corrupt fields."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"no such CSV file: {path}")
    try:
        with file.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, row) for row in reader]
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if not {"clean", "corrupt"} <= set(header):
        raise UsageError(f"{path} must be a CSV with a header row naming the columns clean,corrupt (got "
                         f"{','.join(header) if header else 'an empty file'})")  # fmt: skip
    if not rows:
        raise UsageError(f"{path} has a header but no pairs")
    for line, row in rows:
        if None in row:
            raise UsageError(f"{path}, line {line}: {len(header) + len(row[None])} fields, but the header names "
                             f"{len(header)} ({','.join(header)})")  # fmt: skip
        empty = [k for k in ("clean", "corrupt") if not (row[k] or "").strip()]
        if empty:
            raise UsageError(f"{path}, line {line}: no {' or '.join(empty)} path (expected {','.join(header)})")
    return rows


def _read_pairs_csv(model, path: str) -> dict:
    from vivit_lens.study import analysis

    file = Path(path)
    pairs: dict[str, list] = {}
    for line, row in _csv_rows(path):
        paths = [file.parent / Path(row[k].strip()).expanduser() for k in ("clean", "corrupt")]
        where = f"{path}, line {line}"
        for p in paths:
            if not p.is_file():
                raise UsageError(f"{where}: no such video file: {p}")
        if paths[0].resolve() == paths[1].resolve():
            raise UsageError(f"{where}: clean and corrupt are the same file ({paths[0]})")
        try:
            pair = analysis.load_pair(model, *paths)
        except analysis.PairError as e:
            raise UsageError(f"{where}: {e}") from None
        if pair.clean.shape == pair.corrupt.shape and bool((pair.clean == pair.corrupt).all()):
            raise UsageError(f"{where}: the clean and corrupt clips are identical at the model's input")
        pair.name = f"line{line}:{paths[0].name}"
        pairs.setdefault((row.get("domain") or "user").strip() or "user", []).append(pair)
    return pairs


def _warn_small(pairs: dict, log) -> None:
    for domain, items in pairs.items():
        if len(items) < MIN_PAIRS_FOR_CI:
            log(f"warning: {domain}: {len(items)} analysed pair(s); with fewer than {MIN_PAIRS_FOR_CI} the 95% "
                "bootstrap CIs are not meaningful (use --pairs 10 or more for conclusions)")  # fmt: skip


def cmd_study(args, log) -> int:
    from vivit_lens import synthetic

    _check_common(args)
    if args.pairs_csv and (args.pairs is not None or args.actions):
        raise UsageError("--pairs-csv reads the pairs from the CSV: it cannot be combined with --pairs or --action")
    args.pairs = DEFAULT_PAIRS if args.pairs is None else args.pairs
    if args.pairs < 1:
        raise UsageError(f"--pairs must be >= 1, got {args.pairs}")
    if args.bootstrap < 1:
        raise UsageError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    if args.folds < 2:
        raise UsageError(f"--folds must be >= 2, got {args.folds}")
    if args.probe_pairs < 0:
        raise UsageError(f"--probe-pairs must be >= 0, got {args.probe_pairs}")
    actions = args.actions or ["bowling", "golf_putt"]
    for a in actions:
        if a not in synthetic.ACTIONS:
            raise UsageError(f"unknown action {a!r}; expected one of {', '.join(synthetic.ACTIONS)}")
    if args.pairs_csv:
        _csv_rows(args.pairs_csv)  # the CSV's own problems, before any loading
    _check_workers(args)
    t0 = time.perf_counter()
    out = _output(args, args.pairs_csv and Path(args.pairs_csv).parent, args.model)
    try:
        return _study(args, log, out, actions, t0)
    finally:
        out.discard()


def _check_workers(args) -> None:
    """--workers / --ray-address: checked, and Ray importable, before any compute."""
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.workers is None and args.ray_address is None:
        return
    from vivit_lens.study.distributed import RayNotInstalledError, import_ray

    flag = "--workers" if args.workers is not None else "--ray-address"
    try:
        import_ray()
    except RayNotInstalledError:
        from vivit_lens.study.distributed import INSTALL_HINT

        raise UsageError(f"{flag} runs the study on Ray, which is not installed; {INSTALL_HINT}") from None


def _runner(args, model, log):
    """A RayRunner for --workers / --ray-address (None: serial, in this process)."""
    if args.workers is None and args.ray_address is None:
        return None
    from vivit_lens.study.distributed import RayRunner, WorkerError

    try:
        runner = RayRunner(model, args.workers, address=args.ray_address)
    except (WorkerError, ValueError) as e:
        raise UsageError(str(e)) from None
    log(f"ray: {runner.workers} worker(s), one model replica each on {', '.join(sorted({p[0] for p in runner.placement}))}")
    return runner


def _study(args, log, out, actions: list[str], t0: float) -> int:
    from vivit_lens.study import analysis, report
    from vivit_lens.study.summary import study_headline

    model, name = _load_model(args.model, args)
    _check_signal_layer(model, args.signal_layer)
    cls = _resolve_class(model, args.cls)
    if args.pairs_csv:
        pairs = probe_pairs = _read_pairs_csv(model, args.pairs_csv)
        source = {"pairs_csv": str(args.pairs_csv)}
    else:
        n_gen = max(args.pairs, args.probe_pairs)
        generated = {a: analysis.generate_pairs(model, a, n_gen, seed=args.seed, progress=args.progress)
                     for a in actions}  # fmt: skip
        pairs = {a: g[: args.pairs] for a, g in generated.items()}
        probe_pairs = {a: g[: max(args.probe_pairs, args.pairs)] for a, g in generated.items()}
        source = {"generated": {"actions": actions, "pairs_per_action": args.pairs, "first_seed": args.seed,
                                "probe_pairs_per_action": len(next(iter(probe_pairs.values()))),
                                "renderer": "vivit_lens.synthetic.render_pair"}}  # fmt: skip
    log(f"model {name}: {sum(len(v) for v in pairs.values())} pairs in {len(pairs)} domain(s)")
    _warn_small(pairs, log)
    runner = _runner(args, model, log)
    try:
        st = analysis.study(model, pairs, label=cls, signal_layer=args.signal_layer,
                            signal_positions=args.signal_positions, n_boot=args.bootstrap, seed=args.seed,
                            probe_pairs=probe_pairs, k_folds=args.folds, progress=args.progress,
                            batch_size=args.batch_size, runner=runner)  # fmt: skip
    finally:
        if runner is not None:
            runner.close()
    st["definitions"] = analysis.definitions("study", n_boot=args.bootstrap, seed=args.seed)
    st["meta"] = analysis.provenance(model, name, pairs=source, command=["vivit-lens", *args.argv])
    st["timings_s"] = {"total_before_report": time.perf_counter() - t0}
    _write(out, lambda folder: report.write_study(st, folder, formats=args.formats, progress=args.progress), log, t0,
           study_headline(analysis.jsonable(st)))
    return EXIT_OK


def cmd_compare(args, log) -> int:
    from vivit_lens.study.compare import compare_studies, load_study, write_compare

    _check_formats(args)
    if len(args.studies) < 2:
        raise UsageError(f"compare needs two or more study folders, got {len(args.studies)}")
    names = [n.strip() for n in args.names.split(",")] if args.names else [Path(f).name for f in args.studies]
    if len(names) != len(args.studies) or len(set(names)) != len(names) or not all(names):
        raise UsageError(f"--names must give {len(args.studies)} distinct names, one per study; got {names} (name "
                         f"folders differently or pass --names)")  # fmt: skip
    t0 = time.perf_counter()
    studies = {n: load_study(f) for n, f in zip(names, args.studies)}
    cmp = compare_studies(studies)
    out = _output(args, *args.studies)
    try:
        headline = [f"{dom}: " + "; ".join(
            f"{n} probe {v['probe']['best'][0]:.2f} (L{v['probe']['best_layer']}, {v['probe']['n_pairs']} pairs)"
            for n, v in models.items() if v and "probe" in v) for dom, models in cmp["domains"].items()]  # fmt: skip
        _write(out, lambda folder: write_compare(cmp, folder, formats=args.formats), log, t0, headline)
    finally:
        out.discard()
    return EXIT_OK


def cmd_train(args, log) -> int:
    import shlex

    from vivit_lens import train

    t0 = time.perf_counter()
    try:
        tc = train.config_from_args(args, progress=args.progress)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    out = _output(args, tc.init_from)
    run_log = logging.getLogger(train.__name__)
    level = run_log.level
    try:
        if not args.quiet:  # the run's log: rendering, the loss every 25 steps, the evaluations
            run_log.setLevel(logging.INFO)
        try:
            result = train.train(tc)
        except ValueError as e:  # settings that only the data or the --init-from model can refute
            raise UsageError(str(e)) from None
        command = shlex.join(["vivit-lens", *args.argv])
        train.write_run(out.tmp, tc, result, command)
        out.commit()
    finally:
        out.discard()
        run_log.setLevel(level)
    heldout = "not measured (--n-eval 0)" if result.heldout_accuracy is None else f"{result.heldout_accuracy:.4f}"
    log(f"summary:\n  held-out accuracy {heldout}, train accuracy {result.train_accuracy:.4f}, "
        f"{result.wall_seconds:.0f} s\nmodel:         {out.target}/\nwrote it in {time.perf_counter() - t0:.1f} s")
    return EXIT_OK


def _bad_input_types() -> tuple[type[BaseException], ...]:
    from vivit_lens import CheckpointError, CheckpointNotFoundError, InputError
    from vivit_lens.study.analysis import PairError
    from vivit_lens.study.compare import StudyFolderError
    from vivit_lens.io.atomic import OutputError
    from vivit_lens.models.config import ConfigError
    from vivit_lens.interp.memory import MemoryGuardError
    from vivit_lens.io.video import VideoError

    return (UsageError, PairError, VideoError, InputError, ConfigError, CheckpointError, CheckpointNotFoundError,
            OutputError, MemoryGuardError, StudyFolderError)  # fmt: skip


def one_line(e: BaseException) -> str:
    """An error message on one line (multi-line messages, such as a checkpoint's key lists, are joined)."""
    return " ".join(str(e).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vivit-lens` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed its usage message
        return EXIT_OK if e.code == 0 else EXIT_BAD_INPUT
    args.argv = argv
    # Progress bars only where a person watches: not with --quiet, and not into a log file or a pipe.
    args.progress = not (args.no_progress or args.quiet) and sys.stderr.isatty()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr)

    from vivit_lens.interp.memory import keep_freed_memory

    keep_freed_memory()  # each cache / patching run reuses the last one's memory (faster on glibc: RESULTS.md)
    bad = _bad_input_types()
    root = logging.getLogger()
    level = root.level
    try:
        with warnings.catch_warnings(), _sigterm_unwinds():
            if args.quiet:  # nothing but errors
                warnings.simplefilter("ignore")
                root.setLevel(logging.ERROR)
            command = {"analyze": cmd_analyze, "study": cmd_study, "compare": cmd_compare,
                       "train": cmd_train}[args.command]
            return command(args, log)
    except KeyboardInterrupt:
        print("vivit-lens: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Terminated:
        print("vivit-lens: terminated; nothing was written", file=sys.stderr)
        return 143
    except Exception as e:  # noqa: BLE001 - the boundary between the library and the shell
        if isinstance(e, bad):
            print(f"vivit-lens {args.command}: error: {one_line(e)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        traceback.print_exc()
        print(f"vivit-lens {args.command}: unexpected error ({type(e).__name__}: {e}); please report it with the "
              "traceback above", file=sys.stderr)  # fmt: skip
        return EXIT_UNEXPECTED
    finally:
        root.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
