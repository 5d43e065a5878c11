"""Convert ViViT checkpoints: HF folder or hub id -> vivit_lens folder, and back to an HF folder.

    vivit-convert to-lens google/vivit-b-16x2-kinetics400 ./vivit_b_lens   # vivit_lens.safetensors + config.json
    vivit-convert to-hf ./vivit_b_lens ./vivit_b_hf                         # transformers loads this folder
    python -m weights_convert to-hf ./vivit_b_lens ./vivit_b_hf             # the same, without the script
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vivit_lens.convert import CheckpointError, save_hf_folder, save_lens_folder


def convert(src: str, out: str | Path, to: str) -> Path:
    """Load `src` (any layout vivit_lens reads) and write it to `out` in layout `to` ('lens' or 'hf')."""
    from vivit_lens.model import HookedViViT

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    model = HookedViViT.from_pretrained(src)
    (save_lens_folder if to == "lens" else save_hf_folder)(model, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vivit-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("direction", choices=["to-lens", "to-hf"], help="output layout")
    parser.add_argument("src", help="HF folder, vivit_lens folder, or hub id")
    parser.add_argument("out", help="output folder (new or empty)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.src, args.out, "lens" if args.direction == "to-lens" else "hf")
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"vivit-convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
