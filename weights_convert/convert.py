"""Convert ViViT and VideoMAE checkpoints: HF folder or hub id -> vivit_lens folder, and back to an HF folder.

    vivit-convert to-lens google/vivit-b-16x2-kinetics400 ./vivit_b_lens   # vivit_lens.safetensors + config.json
    vivit-convert to-hf ./vivit_b_lens ./vivit_b_hf                         # transformers loads this folder
    python -m weights_convert to-hf ./vivit_b_lens ./vivit_b_hf             # the same, without the script

The output folder is written beside its target and moved into place when complete (an interrupted or
failed conversion, a full disk included, leaves nothing); a non-empty folder is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vivit_lens.io.atomic import OutputError, OutputFolder
from vivit_lens.models.convert import CheckpointError


def convert(src: str, out: str | Path, to: str, *, overwrite: bool = False) -> Path:
    """Load `src` (any layout vivit_lens reads) and write it to `out` in layout `to` ('lens' or 'hf')."""
    from vivit_lens.models.auto import from_pretrained, save_folder

    if to not in ("lens", "hf"):
        raise ValueError(f"to must be 'lens' or 'hf', got {to!r}")
    folder = OutputFolder(out, overwrite=overwrite, protect=[src] if Path(src).exists() else [])
    try:
        model = from_pretrained(src)  # ViViT or VideoMAE, from the checkpoint's model_type
        try:
            save_folder(model, folder.tmp, to)
        except OSError as e:  # a full disk, a quota: nothing is left behind
            raise OutputError(f"cannot write {out} ({e.strerror or e}); nothing was written") from None
        return folder.commit()
    finally:
        folder.discard()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vivit-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("direction", choices=["to-lens", "to-hf"], help="output layout")
    parser.add_argument("src", help="HF folder, vivit_lens folder, or hub id")
    parser.add_argument("out", help="output folder (new or empty, or any with --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder, once the new "
                        "one is complete")  # fmt: skip
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed its usage message
        return 0 if e.code == 0 else 2
    try:
        out = convert(args.src, args.out, "lens" if args.direction == "to-lens" else "hf", overwrite=args.overwrite)
    except KeyboardInterrupt:
        print("vivit-convert: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (CheckpointError, FileNotFoundError, OutputError, ValueError) as e:
        print(f"vivit-convert: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
