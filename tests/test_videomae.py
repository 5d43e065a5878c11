"""HookedVideoMAE computes what transformers' VideoMAE computes (logits, every residual, every attention
pattern, the classifier's input), loads both key schemes strictly, converts both ways, and preprocesses
as `VideoMAEImageProcessor` does."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import max_diff, pixels
from tests.videomae_fixtures import hf_pooled, make_hf_videomae
from vivit_lens import CheckpointError, HookedVideoMAE, HookedViViT, VideoMAEConfig, from_pretrained, video
from vivit_lens.config import ConfigError
from vivit_lens.videomae_config import VIDEOMAE_PROCESSOR, videomae_processor

CONFIGS = {
    "small_mean_pooling": {},
    "first_token_readout": {"use_mean_pooling": False},
    "no_qkv_bias": {"qkv_bias": False},
    "tubelet_1_patch_4": {"tubelet_size": 1, "patch_size": 4, "num_frames": 3, "image_size": 16},
    "tubelet_4_patch_8x16_nonsquare": {
        "tubelet_size": 4,
        "patch_size": [8, 16],
        "num_frames": 12,
        "image_size": [24, 48],
        "use_mean_pooling": False,
    },
    "heads_6": {"hidden_size": 48, "num_attention_heads": 6, "num_hidden_layers": 2},
    "heads_1_gelu_new_eps": {
        "hidden_size": 16,
        "num_attention_heads": 1,
        "intermediate_size": 40,
        "hidden_act": "gelu_new",
        "layer_norm_eps": 1e-6,
    },
    "one_layer_one_label": {"num_hidden_layers": 1, "num_labels": 1, "qkv_bias": False, "use_mean_pooling": False},
}


@pytest.fixture(scope="module")
def vm_hf():
    return make_hf_videomae(seed=5, attn="eager")


@pytest.fixture(scope="module")
def vm_folder(tmp_path_factory, vm_hf):
    folder = tmp_path_factory.mktemp("videomae_ckpt")
    vm_hf.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vm_model(vm_folder):
    return HookedVideoMAE.from_pretrained(vm_folder)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_hf_logits_residuals_patterns_and_pooled(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = make_hf_videomae(seed=len(name), attn="eager", **CONFIGS[name])
    hf.save_pretrained(tmp_path)
    model = HookedVideoMAE.from_pretrained(tmp_path)
    x = pixels(hf.config, batch=2, seed=3)
    keep = ("hook_resid_pre", "hook_resid_post", "hook_pattern", "hook_pooled")
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True, output_attentions=True)
        logits, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith(keep))
        plain = model(x)
        pooled = hf_pooled(hf, x)
    assert model.cfg.n_pos == model.cfg.n_tubelets == ref.hidden_states[0].shape[1]
    for got, what in ((logits, "cached"), (plain, "plain")):
        assert max_diff(got, ref.logits) < 1e-5, f"{name}: {what} logits max abs diff {max_diff(got, ref.logits):.2e}"
    assert max_diff(cache["hook_pooled"], pooled) < 1e-5, f"{name}: pooled {max_diff(cache['hook_pooled'], pooled):.2e}"
    n = model.cfg.n_layers
    assert len(ref.hidden_states) == n + 1 and len(ref.attentions) == n
    for layer in range(n):
        for got, want, what in (
            (cache[f"blocks.{layer}.hook_resid_pre"], ref.hidden_states[layer], "resid_pre"),
            (cache[f"blocks.{layer}.hook_resid_post"], ref.hidden_states[layer + 1], "resid_post"),
            (cache[f"blocks.{layer}.attn.hook_pattern"], ref.attentions[layer], "pattern"),
        ):
            d = max_diff(got, want)
            assert d < 1e-5, f"{name}: layer {layer} {what} max abs diff {d:.2e}"


def test_fused_path_matches_hf_sdpa(vm_hf, vm_model):
    sdpa = make_hf_videomae(seed=5, attn="sdpa")  # the same weights as vm_hf
    x = pixels(vm_hf.config, batch=3, seed=7)
    with torch.no_grad():
        d = max_diff(vm_model(x), sdpa(x).logits)
    assert d < 1e-5, f"max abs diff {d:.2e}"


def test_position_table_is_a_fixed_buffer_equal_to_hf(vm_model):
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    cfg = vm_model.cfg
    assert torch.equal(vm_model.W_pos, get_sinusoid_encoding_table(cfg.n_pos, cfg.d_model)[0])
    assert not any(n.endswith("W_pos") for n, _ in vm_model.named_parameters())
    assert "pos_embed.W_pos" in dict(vm_model.named_buffers()) and "pos_embed.W_pos" not in vm_model.state_dict()
    assert not hasattr(vm_model.embed, "cls_token")
    assert vm_model.blocks[0].attn.k_proj.bias is None and vm_model.blocks[0].attn.q_proj.bias is not None
    assert torch.equal(vm_model.b_K, torch.zeros_like(vm_model.b_Q))
    double = HookedVideoMAE(cfg).to(torch.float64)
    assert double.W_pos.dtype == torch.float64


def test_hook_names_are_vivits_with_the_videomae_readout(vm_model, small_model):
    vivit = [n for n in small_model.hook_names if not n.startswith("ln_final.")]
    assert vm_model.hook_names == vivit + ["fc_norm.hook_scale", "fc_norm.hook_normalized", "hook_pooled"]
    first = HookedVideoMAE(dataclasses.replace(vm_model.cfg, use_mean_pooling=False))
    assert first.hook_names == vivit + ["ln_final.hook_scale", "ln_final.hook_normalized", "hook_pooled"]
    assert vm_model.hook_dict["hook_pooled"].axes == "batch d_model"
    assert vm_model.hook_dict["fc_norm.hook_scale"].axes == "batch 1"


@pytest.mark.parametrize("mean_pooling", [True, False])
def test_readout_interface(vm_model, small_model, mean_pooling):
    """`unembed(readout(final resid))` is the logits, and the readout hook holds the classifier's input, for
    both architectures; the readout reads `readout_positions` only."""
    vm = vm_model if mean_pooling else HookedVideoMAE(dataclasses.replace(vm_model.cfg, use_mean_pooling=False))
    torch.manual_seed(0)
    for model in (vm, small_model):
        x = pixels(model.cfg, batch=2, seed=11)
        with torch.no_grad():
            logits, cache = model.run_with_cache(x)
            final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
            vec = model.readout(final)
            assert torch.allclose(model.unembed(vec), logits, atol=1e-6, rtol=0)
            held = cache[model.readout_hook_name]
            held = held[:, 0] if held.ndim == 3 else held
            assert torch.allclose(held, vec, atol=1e-6, rtol=0)
            others = [p for p in range(model.cfg.n_pos) if p not in model.readout_positions]
            changed = final.clone()
            changed[:, others] += 5.0
            assert torch.equal(model.readout(changed), vec)
            norm = model.readout_norm_name
            assert f"{norm}.hook_scale" in model.hook_dict
    assert small_model.readout_positions == (0,) and small_model.readout_norm_name == "ln_final"
    assert vm.readout_positions == (tuple(range(vm.cfg.n_pos)) if mean_pooling else (0,))


@pytest.mark.parametrize("mean_pooling", [True, False])
def test_readout_matches_hf_head_where_the_norm_eps_matters(mean_pooling):
    """On small residuals the LayerNorm eps dominates: fc_norm's (1e-5, not the config's) and the final norm's."""
    hf = make_hf_videomae(seed=2, use_mean_pooling=mean_pooling, layer_norm_eps=1e-6)
    model = HookedVideoMAE.from_hf_model(hf)
    resid = 1e-3 * torch.randn(2, model.cfg.n_pos, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        norm = hf.fc_norm(resid.mean(1)) if mean_pooling else hf.videomae.layernorm(resid)[:, 0]
        want = hf.classifier(norm)
        got = model.unembed(model.readout(resid))
    assert max_diff(got, want) < 1e-5 * want.abs().max().item(), f"max abs diff {max_diff(got, want):.2e}"


# Loading ---------------------------------------------------------------------------------------------------
def _folder_with(tmp_path, src, state, filename="model.safetensors", config=None):
    folder = tmp_path / "ckpt"
    folder.mkdir(parents=True)
    if config is None:
        shutil.copy(src / "config.json", folder / "config.json")
    else:
        (folder / "config.json").write_text(json.dumps(config))
    if filename.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, folder / filename)
    else:
        torch.save(state, folder / filename)
    return folder


def _same_weights(a, b) -> None:
    for k, v in b.state_dict().items():
        assert torch.equal(a.state_dict()[k], v), k


def test_on_disk_names_are_q_bias_v_bias(vm_folder):
    keys = set(load_file(vm_folder / "model.safetensors"))
    assert "videomae.encoder.layer.0.attention.attention.q_bias" in keys
    assert "videomae.encoder.layer.0.attention.attention.key.weight" in keys
    assert not any(k.endswith("key.bias") for k in keys) and "fc_norm.weight" in keys


def test_in_memory_names_pickle_format_and_no_prefix(tmp_path, vm_hf, vm_folder, vm_model):
    state = vm_hf.state_dict()
    assert "videomae.encoder.layer.0.attention.attention.query.bias" in state
    _same_weights(
        HookedVideoMAE.from_pretrained(_folder_with(tmp_path / "a", vm_folder, state, "pytorch_model.bin")), vm_model
    )
    bare = {k.removeprefix("videomae."): v for k, v in load_file(vm_folder / "model.safetensors").items()}
    assert "encoder.layer.0.attention.attention.v_bias" in bare
    _same_weights(HookedVideoMAE.from_pretrained(_folder_with(tmp_path / "b", vm_folder, bare)), vm_model)


def test_strict_accounting_lists_every_problem(tmp_path, vm_folder):
    state = load_file(vm_folder / "model.safetensors")
    del state["videomae.encoder.layer.1.attention.attention.v_bias"]
    state["videomae.encoder.layer.0.attention.attention.key.bias"] = torch.zeros(48)
    state["videomae.encoder.layer.0.attention.attention.query.bias"] = torch.zeros(48)  # beside q_bias
    state["fc_norm.weight"] = torch.zeros(5)
    with pytest.raises(CheckpointError) as info:
        HookedVideoMAE.from_pretrained(_folder_with(tmp_path, vm_folder, state))
    msg = str(info.value)
    assert "missing (1)" in msg and "blocks.1.attn.v_proj.bias" in msg
    assert "unexpected (2)" in msg and "blocks.0.attn.k_proj.bias" in msg and "a second tensor for" in msg
    assert "wrong shape (1)" in msg and "fc_norm.w: checkpoint (5,), model (48,)" in msg


def test_a_vivit_checkpoint_is_not_a_videomae(tmp_path, small_folder, vm_folder):
    with pytest.raises(ConfigError, match="expected a config with model_type 'videomae', got 'vivit'"):
        HookedVideoMAE.from_pretrained(small_folder)
    vivit_weights = load_file(small_folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected"):
        HookedVideoMAE.from_pretrained(_folder_with(tmp_path, vm_folder, vivit_weights))


def test_legacy_qkv_bias_config_key(tmp_path, vm_folder):
    cfg = json.loads((vm_folder / "config.json").read_text())
    cfg["qkv_bias"] = cfg.pop("qv_bias")
    folder = _folder_with(tmp_path, vm_folder, load_file(vm_folder / "model.safetensors"), config=cfg)
    assert HookedVideoMAE.from_pretrained(folder).cfg.qkv_bias is True
    with pytest.raises(ConfigError, match="qv_bias .* and qkv_bias .* disagree"):
        VideoMAEConfig.from_hf_dict({**cfg, "qv_bias": False})
    with pytest.raises(ConfigError, match="tubelet_size must be a positive int"):
        VideoMAEConfig.from_hf_dict({**cfg, "tubelet_size": [2, 16, 16]})


def test_from_pretrained_picks_the_class_from_model_type(tmp_path, small_folder, vm_folder, vm_model):
    assert type(from_pretrained(small_folder)) is HookedViViT
    model = from_pretrained(vm_folder)
    assert type(model) is HookedVideoMAE
    _same_weights(model, vm_model)
    cfg = json.loads((vm_folder / "config.json").read_text())
    for model_type in ("timesformer", None):
        bad = {**cfg, "model_type": model_type} if model_type else {k: v for k, v in cfg.items() if k != "model_type"}
        folder = _folder_with(tmp_path / str(model_type), vm_folder, {}, config=bad)
        with pytest.raises(ConfigError) as info:
            from_pretrained(folder)
        msg = str(info.value)
        assert "\n" not in msg and "'vivit', 'videomae'" in msg
        assert ("'timesformer'" if model_type else "no model_type") in msg


def test_hub_id_is_read_from_the_hf_cache(tmp_path, monkeypatch, vm_folder, vm_model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--tiny-videomae"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    shutil.copytree(vm_folder, repo / "snapshots" / sha)
    model = from_pretrained("someone/tiny-videomae", cache_dir=tmp_path)
    assert type(model) is HookedVideoMAE
    x = pixels(model.cfg, batch=1)
    with torch.no_grad():
        assert torch.equal(model(x), vm_model(x))


def test_save_pretrained_and_weights_convert_round_trip(tmp_path, vm_hf, vm_model):
    from transformers import VideoMAEForVideoClassification

    from weights_convert.convert import main

    vm_model.save_pretrained(tmp_path / "hf")
    assert main(["to-lens", str(tmp_path / "hf"), str(tmp_path / "lens")]) == 0
    assert (tmp_path / "lens" / "vivit_lens.safetensors").is_file()
    assert main(["to-hf", str(tmp_path / "lens"), str(tmp_path / "back")]) == 0
    back, first = (load_file(tmp_path / f / "model.safetensors") for f in ("back", "hf"))
    assert back.keys() == first.keys() and all(torch.equal(back[k], first[k]) for k in back)
    x = pixels(vm_hf.config, batch=2, seed=4)
    with torch.no_grad():
        want = vm_hf(x).logits
        hf = VideoMAEForVideoClassification.from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
        assert max_diff(hf(x).logits, want) == 0
        assert max_diff(from_pretrained(tmp_path / "lens")(x), want) < 1e-5
    processor = json.loads((tmp_path / "back" / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "VideoMAEImageProcessor" and "offset" not in processor


# Preprocessing ---------------------------------------------------------------------------------------------
KINETICS = {
    "size": {"shortest_edge": 224},
    "crop_size": {"height": 224, "width": 224},
    "resample": 2,
    "rescale_factor": 1 / 255,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}
PROCESSOR_CONFIGS = {
    "class_defaults": {},
    "published_kinetics": KINETICS,
    "small_bicubic": {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 24}, "resample": 3},
    "pad_nearest": {"size": {"shortest_edge": 20}, "crop_size": {"height": 30, "width": 26}, "resample": 0},
    "no_resize_no_norm": {"do_resize": False, "crop_size": {"height": 50, "width": 40}, "do_normalize": False},
    "no_rescale": {"do_rescale": False, "size": {"shortest_edge": 17}, "crop_size": {"height": 16, "width": 16}},
}


def _hf_processor(kwargs):
    from transformers import VideoMAEImageProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without torchvision, transformers uses (and says it uses) its PIL backend
        return VideoMAEImageProcessor(**kwargs)


@pytest.mark.parametrize("name", list(PROCESSOR_CONFIGS))
@pytest.mark.parametrize("h,w", [(240, 320), (37, 53), (64, 36), (256, 256), (31, 31)])
def test_preprocess_matches_videomae_image_processor(name, h, w):
    kwargs = PROCESSOR_CONFIGS[name]
    frames = np.random.default_rng(h * 1000 + w).integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    reference = _hf_processor(kwargs)(list(frames), return_tensors="pt").pixel_values
    ours = video.preprocess(frames, videomae_processor(kwargs))
    assert ours.dtype == torch.float32 and ours.shape == reference.shape
    diff = (ours - reference).abs().max().item()
    assert diff <= 1e-5, f"max abs difference {diff}"


def test_processor_defaults_and_folder_loading(vm_folder, vm_model):
    hf = _hf_processor({})
    assert VIDEOMAE_PROCESSOR.shortest_edge == hf.size.shortest_edge == 224
    assert VIDEOMAE_PROCESSOR.rescale_factor == hf.rescale_factor and not VIDEOMAE_PROCESSOR.offset
    assert VIDEOMAE_PROCESSOR.image_mean == tuple(hf.image_mean)
    assert vm_model.processor.crop_size == vm_model.cfg.image_size  # save_pretrained wrote no processor file
    white = video.preprocess(np.full((1, 40, 40, 3), 255, np.uint8), videomae_processor(KINETICS))
    assert torch.allclose(
        white[0, 0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    )
    with pytest.raises(ConfigError, match="only size"):
        videomae_processor({"size": {"height": 224, "width": 224}})


@pytest.mark.slow
def test_full_size_videomae_base_kinetics_architecture(tmp_path, monkeypatch, capsys):
    """The exact MCG-NJU/videomae-base-finetuned-kinetics architecture (16x224x224, 400 classes), random weights."""
    from transformers import VideoMAEConfig as HFConfig
    from transformers import VideoMAEForVideoClassification

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    hf = VideoMAEForVideoClassification(
        HFConfig(num_labels=400, hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True, use_mean_pooling=True)
    ).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.1)
    n_params = sum(p.numel() for p in hf.parameters())
    hf.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({**KINETICS, "image_processor_type": "VideoMAEImageProcessor"})
    )
    model = from_pretrained(tmp_path)
    assert type(model) is HookedVideoMAE and sum(p.numel() for p in model.parameters()) == n_params
    assert model.cfg.grid_shape == (8, 14, 14) and model.cfg.n_pos == 1568 and model.cfg.n_classes == 400
    assert model.processor == videomae_processor(KINETICS)
    x = torch.randn(1, 16, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = hf(x, output_hidden_states=True)
        ref, want = out.hidden_states, out.logits
        del hf, out
        logits, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_post"))
    d = max_diff(logits, want)
    worst_resid = max(max_diff(cache[f"blocks.{i}.hook_resid_post"], ref[i + 1]) for i in range(12))
    with capsys.disabled():
        print(
            f"\n[full-size VideoMAE-B] {n_params:,} parameters; logits max abs diff vs HF: {d:.3e}; "
            f"worst resid_post diff: {worst_resid:.3e}"
        )
    assert d < 1e-4, f"logits max abs diff {d:.2e}"
    assert worst_resid < 1e-3, f"resid_post max abs diff {worst_resid:.2e}"
