"""Files shipped inside the package: a small ViViT trained on the synthetic clips, and minimal pairs.

    model = HookedViViT.from_pretrained(assets.tiny_model_path())    # 10 classes, 16 frames, 64x64
    clean, corrupt, spec = assets.pair_paths("bowling")               # strike vs gutter, mp4 + spec.json
    assets.pairs()                                                    # ("bowling", "golf_putt")

`tiny_vivit/training.json` records how the model was trained (`python -m vivit_lens.train ...`);
the pairs were written by `python -m vivit_lens.assets` (`write_pairs`): for each action, the first
seed whose clean and corrupt clips the shipped model both classifies as that action.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"  # vivit_lens/assets/, beside the subpackages
PAIR_FILES = ("clean.mp4", "corrupt.mp4", "spec.json")


# The models shipped in the package, by the name `--model` takes: the ViViT every default uses, and a VideoMAE
# of the same size trained on the same world (to compare architectures).
SHIPPED_MODELS = {"tiny_vivit": "tiny_vivit", "tiny_videomae": "tiny_videomae"}


def tiny_model_path(name: str = "tiny_vivit") -> Path:
    """A shipped model's HF folder (config.json, model.safetensors, preprocessor_config.json): `tiny_vivit` (the
    default everywhere) or `tiny_videomae`."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"no shipped model {name!r}; shipped: {', '.join(SHIPPED_MODELS)}")
    path = ASSETS / SHIPPED_MODELS[name]
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the shipped model is missing from {path}; reinstall vivit_lens")
    return path


def pairs() -> tuple[str, ...]:
    """Actions with a shipped minimal pair, sorted."""
    root = ASSETS / "pairs"
    if not root.is_dir():
        return ()
    return tuple(sorted(p.name for p in root.iterdir() if all((p / f).is_file() for f in PAIR_FILES)))


def pair_paths(action: str) -> tuple[Path, Path, Path]:
    """(clean.mp4, corrupt.mp4, spec.json) of the shipped minimal pair of `action`."""
    available = pairs()
    if action not in available:
        raise ValueError(f"no shipped minimal pair for {action!r}; shipped: {available}")
    folder = ASSETS / "pairs" / action
    clean, corrupt, spec = (folder / f for f in PAIR_FILES)
    return clean, corrupt, spec


def example_inputs(argv: list[str]) -> tuple[str, str, str]:
    """(model, clean video, corrupt video): `MODEL CLEAN CORRUPT` from `argv` when given, else the shipped
    model and bowling pair. The examples' command lines."""
    if len(argv) >= 3:
        return argv[0], argv[1], argv[2]
    clean, corrupt, _spec = pair_paths("bowling")
    return str(tiny_model_path()), str(clean), str(corrupt)


def write_pairs(model_path: str | Path | None = None, out: str | Path | None = None,
                actions: tuple[str, ...] = ("bowling", "golf_putt"), max_seed: int = 100) -> dict[str, int]:
    """Write a minimal pair per action into `out/<action>/` (default: the package's assets/pairs):
    the first seed in [0, max_seed) whose two clips the model classifies as the action. Returns the seeds."""
    import torch

    from vivit_lens import HookedViViT, synthetic
    from vivit_lens.io import video

    model = HookedViViT.from_pretrained(model_path or tiny_model_path())
    cfg, root = model.cfg, Path(out) if out is not None else ASSETS / "pairs"
    chosen = {}
    for action in actions:
        label = model.label_id(action)
        for seed in range(max_seed):
            clean, corrupt, _ = synthetic.render_pair(action, seed, cfg.num_frames, cfg.image_size)
            with torch.no_grad():
                top = model(video.preprocess([clean, corrupt], model.processor)).argmax(-1)
            if bool((top == label).all()):
                synthetic.write_pair(root / action, action, seed, cfg.num_frames, cfg.image_size)
                chosen[action] = seed
                break
        else:
            raise RuntimeError(f"no seed below {max_seed} gives a {action} pair the model classifies as {action}")
    return chosen


__all__ = ["ASSETS", "example_inputs", "pair_paths", "pairs", "tiny_model_path", "write_pairs"]


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger(__name__).info("wrote pairs with seeds %s to %s", write_pairs(), ASSETS / "pairs")
