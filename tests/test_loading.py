"""Loading checkpoints: both key schemes, both file formats, the hub cache, strict accounting, round trips."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import make_hf, max_diff, pixels
from vivit_lens import CheckpointError, CheckpointNotFoundError, HookedViViT


def _folder_with(tmp_path, small_folder, state, filename="model.safetensors"):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(small_folder / "config.json", folder / "config.json")
    if filename.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, folder / filename)
    else:
        torch.save(state, folder / filename)
    return folder


def test_on_disk_names_are_what_save_pretrained_writes(small_folder):
    keys = set(load_file(small_folder / "model.safetensors"))
    assert "vivit.encoder.layer.0.attention.attention.query.weight" in keys
    assert "vivit.embeddings.patch_embeddings.projection.weight" in keys


def test_transformers5_in_memory_names_and_pickle_format(tmp_path, small_hf, small_folder, small_model):
    state = small_hf.state_dict()
    assert "vivit.layers.0.attention.q_proj.weight" in state
    folder = _folder_with(tmp_path, small_folder, state, "pytorch_model.bin")
    model = HookedViViT.from_pretrained(folder)
    for k, v in small_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_pickle_with_code_is_refused(tmp_path, small_folder):
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(small_folder / "config.json", folder)

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"x": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        HookedViViT.from_pretrained(folder)


def test_strict_accounting_lists_every_problem(tmp_path, small_folder):
    state = load_file(small_folder / "model.safetensors")
    del state["vivit.encoder.layer.1.output.dense.bias"]
    state["vivit.encoder.layer.0.surprise.weight"] = torch.zeros(3)
    state["vivit.layernorm.weight"] = torch.zeros(5)
    folder = _folder_with(tmp_path, small_folder, state)
    with pytest.raises(CheckpointError) as info:
        HookedViViT.from_pretrained(folder)
    msg = str(info.value)
    assert "missing (1)" in msg and "blocks.1.mlp.fc2.bias" in msg
    assert "unexpected (1)" in msg and "vivit.encoder.layer.0.surprise.weight" in msg
    assert "wrong shape (1)" in msg and "ln_final.w: checkpoint (5,), model (48,)" in msg


def test_pooler_is_explicitly_ignored(tmp_path, small_folder, small_model):
    state = load_file(small_folder / "model.safetensors")
    state["vivit.pooler.dense.weight"] = torch.zeros(48, 48)
    state["vivit.pooler.dense.bias"] = torch.zeros(48)
    model = HookedViViT.from_pretrained(_folder_with(tmp_path, small_folder, state))
    assert torch.equal(model.W_U, small_model.W_U)


def test_config_that_does_not_fit_the_weights(tmp_path, small_folder):
    folder = tmp_path / "mismatch"
    shutil.copytree(small_folder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_frames"] = 16
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"pos_embed.W_pos: checkpoint \(65, 48\), model \(129, 48\)"):
        HookedViViT.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights_file(tmp_path, small_folder, damage):
    folder = tmp_path / "corrupt"
    shutil.copytree(small_folder, folder)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00not a tensor file" * 10, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="cannot read weights file .*model.safetensors"):
        HookedViViT.from_pretrained(folder)


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no config.json"):
        HookedViViT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vivit"}))
    with pytest.raises(CheckpointNotFoundError, match="no weights"):
        HookedViViT.from_pretrained(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint folder"):
        HookedViViT.from_pretrained(tmp_path / "nope" / "deeper")


def test_hub_id_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFoundError, match=r"not in the Hugging Face cache \(HF_HUB_OFFLINE is set"):
        HookedViViT.from_pretrained("google/vivit-b-16x2-kinetics400", cache_dir=tmp_path)


def test_hub_id_is_read_from_the_hf_cache(tmp_path, monkeypatch, small_folder, small_model):
    """A hub cache laid out as huggingface-hub writes it (refs/main -> snapshots/<sha>) is used offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--tiny-vivit"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    shutil.copytree(small_folder, repo / "snapshots" / sha)
    model = HookedViViT.from_pretrained("someone/tiny-vivit", cache_dir=tmp_path)
    x = pixels(model.cfg, batch=1)
    with torch.no_grad():
        assert torch.equal(model(x), small_model(x))


def test_converter_round_trip_is_exact_and_transformers_loads_it(tmp_path, small_hf, small_folder):
    from transformers import VivitForVideoClassification

    lens_dir, hf_dir = tmp_path / "lens", tmp_path / "hf"
    for args in (["to-lens", str(small_folder), str(lens_dir)], ["to-hf", str(lens_dir), str(hf_dir)]):
        r = subprocess.run([sys.executable, "-m", "weights_convert", *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert (lens_dir / "vivit_lens.safetensors").is_file()
    assert "blocks.0.attn.W_Q" not in load_file(lens_dir / "vivit_lens.safetensors")  # fused storage, per-head views
    original, back = load_file(small_folder / "model.safetensors"), load_file(hf_dir / "model.safetensors")
    assert original.keys() == back.keys()
    for k in original:
        assert torch.equal(original[k], back[k]), k
    reloaded = VivitForVideoClassification.from_pretrained(hf_dir).eval()
    x = pixels(small_hf.config, batch=1)
    with torch.no_grad():
        assert max_diff(reloaded(x).logits, small_hf(x).logits) < 1e-6
    assert reloaded.config.id2label == small_hf.config.id2label


def test_converter_errors_are_messages_not_tracebacks(tmp_path, small_folder):
    r = subprocess.run([sys.executable, "-m", "weights_convert", "to-lens", str(tmp_path / "missing"), str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    r = subprocess.run([sys.executable, "-m", "weights_convert", "to-hf", str(small_folder), str(tmp_path / "busy")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not empty" in r.stderr


def test_save_pretrained_keeps_labels_and_processor(tmp_path):
    hf = make_hf(num_labels=3)
    hf.config.id2label = {0: "bowling", 1: "golf", 2: "juggling"}
    hf.config.label2id = {v: k for k, v in hf.config.id2label.items()}
    model = HookedViViT.from_hf_model(hf)
    model.save_pretrained(tmp_path)
    again = HookedViViT.from_pretrained(tmp_path)
    assert again.labels == {0: "bowling", 1: "golf", 2: "juggling"}
    assert again.label_id("golf") == 1
    assert again.processor == model.processor
    with pytest.raises(KeyError, match="not one of the model's 3 classes"):
        again.label_id("tennis")
    x = pixels(model.cfg, batch=1)
    with torch.no_grad():
        assert max_diff(again(x), hf(x).logits) < 1e-5
