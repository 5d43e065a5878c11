"""Finding and reading checkpoint files: local folders and the Hugging Face hub (through its cache).

    files = resolve("google/vivit-b-16x2-kinetics400")   # or a folder with config.json
    state = read_state_dict(files.weights)                 # {name: tensor}, safetensors or pickle (weights_only)
    files.config, files.processor                          # paths (processor may be None)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from vivit_lens.models.convert import CheckpointError

WEIGHT_FILES = ("vivit_lens.safetensors", "model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class CheckpointNotFoundError(FileNotFoundError):
    """No checkpoint could be found (or downloaded) for the given name."""


@dataclass(frozen=True)
class CheckpointFiles:
    config: Path
    weights: tuple[Path, ...]
    processor: Path | None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve(name_or_path: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None) -> CheckpointFiles:
    """Local folder -> its files; anything else is taken as a hub id and fetched through the HF cache."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise CheckpointNotFoundError(
            f"expected a checkpoint folder (with config.json) or a hub id such as 'google/vivit-b-16x2-kinetics400', "
            f"got {name_or_path!r}"
        )
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _resolve_folder(path)
    if path.exists():
        raise CheckpointNotFoundError(f"{path} is a file; expected a checkpoint folder (with config.json) or a hub id")
    if str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
        raise CheckpointNotFoundError(f"no checkpoint folder at {path}")
    return _resolve_hub(str(name_or_path), revision=revision, cache_dir=cache_dir)


def _resolve_folder(folder: Path) -> CheckpointFiles:
    config = folder / "config.json"
    if not config.is_file():
        raise CheckpointNotFoundError(f"{folder} has no config.json")
    for index in INDEX_FILES:
        if (folder / index).is_file():
            return CheckpointFiles(config, _shards(folder / index), _processor(folder))
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return CheckpointFiles(config, (folder / name,), _processor(folder))
    raise CheckpointNotFoundError(f"{folder} has config.json but no weights (looked for {', '.join(WEIGHT_FILES)})")


def _shards(index: Path) -> tuple[Path, ...]:
    """The shard files a sharded checkpoint's index names; each must lie inside the checkpoint folder."""
    try:
        weight_map = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{index}: cannot read it as JSON ({e})") from None
    except (KeyError, TypeError):
        raise CheckpointError(f"{index}: expected a JSON object with a 'weight_map' of tensor name -> file") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names")
    folder = index.parent.resolve()
    shards = []
    for name in sorted(set(weight_map.values())):
        shard = (index.parent / name).resolve()
        if not shard.is_relative_to(folder):
            raise CheckpointError(f"{index}: shard {name!r} lies outside the checkpoint folder {index.parent}")
        shards.append(index.parent / name)
    return tuple(shards)


def _processor(folder: Path) -> Path | None:
    p = folder / "preprocessor_config.json"
    return p if p.is_file() else None


def hub_reachable(timeout: float = 5.0) -> str | None:
    """None if the Hugging Face hub answers; otherwise why not (one request, no retries).

    huggingface-hub retries a failed connection five times with backoff (about 25 s of repeated
    warnings); asking once first lets a machine without network fall back to the cache at once.
    """
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - DNS, refused, timeout, proxy, TLS: all mean "not reachable"
        return f"{type(e).__name__}: {e}"
    return None


def _resolve_hub(repo_id: str, *, revision: str | None, cache_dir: str | Path | None) -> CheckpointFiles:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise CheckpointNotFoundError(f"{repo_id!r} is neither a local folder nor a valid hub id ({e})") from None
    offline = _offline()
    unreachable = None if offline else hub_reachable()

    def fetch(filename: str) -> Path:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                    local_files_only=offline or unreachable is not None))

    try:
        config = fetch("config.json")
    except LocalEntryNotFoundError:
        raise CheckpointNotFoundError(
            f"{repo_id!r} is not a local folder and is not in the Hugging Face cache"
            + (" (HF_HUB_OFFLINE is set, so nothing is downloaded)" if offline else
               f" and the hub cannot be reached ({unreachable})" if unreachable else " and could not be downloaded")
            + "; download it where the hub is reachable, or pass a local folder"
        ) from None
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        raise CheckpointNotFoundError(f"could not fetch {repo_id!r} from the Hugging Face hub: {e}") from None
    weights = None
    for name in ("model.safetensors", "pytorch_model.bin"):
        try:
            weights = fetch(name)
            break
        except (EntryNotFoundError, LocalEntryNotFoundError):
            continue
        except Exception as e:
            raise CheckpointNotFoundError(f"could not fetch {repo_id}/{name}: {e}") from None
    if weights is None:
        raise CheckpointNotFoundError(f"{repo_id!r} has config.json but neither model.safetensors nor pytorch_model.bin")
    try:
        processor = fetch("preprocessor_config.json")
    except Exception:
        processor = None
    return CheckpointFiles(config, (weights,), processor)


def read_state_dict(paths: tuple[Path, ...] | list[Path]) -> dict[str, Tensor]:
    """Read safetensors files, or pickled `.bin` files with `torch.load(weights_only=True)` only."""
    state: dict[str, Tensor] = {}
    for path in paths:
        if not path.is_file():
            raise CheckpointNotFoundError(f"weights file {path} does not exist")
        try:
            part = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt, truncated, or a pickle that is more than tensors
            raise CheckpointError(f"cannot read weights file {path}: {e}") from None
        if not isinstance(part, dict) or not all(isinstance(v, Tensor) for v in part.values()):
            raise CheckpointError(f"{path} does not hold a flat state dict of tensors")
        for name, tensor in part.items():
            if not tensor.is_floating_point():
                raise CheckpointError(f"{path}: tensor {name} has dtype {tensor.dtype}; weights must be floating point")
            if not torch.isfinite(tensor).all():
                bad = (~torch.isfinite(tensor)).sum().item()
                raise CheckpointError(f"{path}: tensor {name} holds {bad} NaN or infinite value(s)")
        clash = state.keys() & part.keys()
        if clash:
            raise CheckpointError(f"{path} repeats keys of an earlier shard: {sorted(clash)[:5]}")
        state.update(part)
    return state
