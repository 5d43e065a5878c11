"""The identities of the analysis code hold on HookedVideoMAE where that code is architecture-agnostic already:
patching (ours and TransformerLens' own), cache decompositions, and DLA written against the readout interface.

The references are identities (a patch of everything that writes the final residual gives the source run)
and independent implementations (a hand-written hook, TransformerLens' patching functions)."""

from __future__ import annotations


import pytest
import torch

from tests.conftest import max_diff, pixels
from tests.videomae_fixtures import make_hf_videomae
from vivit_lens import HookedVideoMAE
from vivit_lens import patching as ours
from vivit_lens.metrics import Logit, LogitDiff
from vivit_lens.patching import Patch, run_patches

LABEL, OTHER = 3, 5


@pytest.fixture(scope="module", params=[True, False], ids=["mean_pooling", "first_token"])
def model(request):
    return HookedVideoMAE.from_hf_model(make_hf_videomae(seed=9, use_mean_pooling=request.param))


@pytest.fixture(scope="module")
def pair(model):
    clean = pixels(model.cfg, batch=2, seed=21)
    corrupt = clean.clone()
    corrupt[:, 4:, :, 8:24, 8:24] = pixels(model.cfg, batch=2, seed=22)[:, 4:, :, 8:24, 8:24]
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean)
        corrupt_logits, corrupt_cache = model.run_with_cache(corrupt)
    return clean, corrupt, clean_logits, corrupt_logits, clean_cache, corrupt_cache


def _every_writer(model) -> list[Patch]:
    """Everything that writes the final residual: the embedding (the position table is fixed), every head's
    output (hook_z), every MLP's output."""
    n = model.cfg.n_layers
    return [Patch("hook_embed")] + [Patch(f"blocks.{l}.{h}") for l in range(n) for h in ("attn.hook_z", "hook_mlp_out")]


@pytest.mark.parametrize("fast", [True, False])
def test_patching_every_writer_from_the_corrupt_run_gives_the_corrupt_logits(model, pair, fast):
    clean, _, clean_logits, corrupt_logits, _, corrupt_cache = pair
    runs = [_every_writer(model), Patch("hook_pos_embed")]  # the fixed table: the same in both runs
    out = run_patches(model, clean, corrupt_cache, runs, Logit(LABEL), progress=False, fast=fast)
    assert max_diff(out[0], corrupt_logits[:, LABEL].mean()) < 1e-5, max_diff(out[0], corrupt_logits[:, LABEL].mean())
    assert max_diff(out[1], clean_logits[:, LABEL].mean()) < 1e-5


def test_resuming_before_the_last_block_reads_through_the_readout(model, pair):
    """A patch of the residual before the last block takes the fast tail (the last block at the readout's
    positions only, then `model.readout`): it must give the source run's logits, as the slow path does."""
    clean, _, _, corrupt_logits, _, corrupt_cache = pair
    n = model.cfg.n_layers
    patches = [Patch(f"blocks.{n - 2}.hook_resid_post"), Patch(f"blocks.{n - 2}.hook_resid_post", positions=[0, 5])]
    metric = LogitDiff(LABEL, OTHER)
    fast = run_patches(model, clean, corrupt_cache, patches, metric, progress=False)
    slow = run_patches(model, clean, corrupt_cache, patches, metric, progress=False, fast=False)
    assert max_diff(fast, slow) < 1e-5, max_diff(fast, slow)
    assert max_diff(fast[0], metric(corrupt_logits).mean()) < 1e-5


def test_single_head_patch_matches_a_hand_written_hook(model, pair):
    clean, _, _, _, _, corrupt_cache = pair
    layer, head = 1, 2

    def overwrite(z, hook):
        z = z.clone()
        z[:, :, head] = corrupt_cache[hook.name][:, :, head]
        return z

    with torch.no_grad():
        want = LogitDiff(LABEL, OTHER)(
            model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", overwrite)])
        )
    got = run_patches(
        model,
        clean,
        corrupt_cache,
        [Patch(f"blocks.{layer}.attn.hook_z", heads=head)],
        LogitDiff(LABEL, OTHER),
        progress=False,
    )
    assert max_diff(got[0], want.mean()) < 1e-5


def test_transformer_lens_head_patching_agrees_with_ours(model, pair):
    tl_patching = pytest.importorskip("transformer_lens.patching")
    _, corrupt, _, _, clean_cache, _ = pair

    def logit_diff(logits):
        return (logits[:, LABEL] - logits[:, OTHER]).mean()

    theirs = tl_patching.get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, logit_diff)
    mine = ours.get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, logit_diff, progress=False)
    assert mine.shape == theirs.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert max_diff(mine, theirs) < 2e-5, max_diff(mine, theirs)


def test_resid_decompositions_sum_to_the_final_residual(model, pair):
    *_, clean_cache, _ = pair
    final = clean_cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    stack = clean_cache.decompose_resid()
    assert max_diff(stack.sum(0), final) < 1e-5
    full = clean_cache.get_full_resid_decomposition(expand_neurons=True, model=model)
    assert max_diff(full.sum(0), final) < 1e-4, max_diff(full.sum(0), final)


def test_dla_through_the_readout_interface_sums_to_the_logit(model, small_model):
    """DLA written once against the readout interface (positions, norm) gives the logit exactly on VideoMAE
    (mean pooling or first token) and on ViViT alike."""
    for m in (model, small_model):
        x = pixels(m.cfg, batch=2, seed=5)
        with torch.no_grad():
            logits, cache = m.run_with_cache(x)
        stack = cache.decompose_resid()  # [component batch pos d_model], sums to the final residual
        pooled = stack[:, :, list(m.readout_positions)].mean(2)  # [component batch d_model]
        norm = m.get_submodule(m.readout_norm_name)
        total = pooled.sum(0)
        centred_total = total - total.mean(-1, keepdim=True)
        scale = (centred_total.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()  # frozen at the run's value
        direction = norm.w * m.W_U[:, LABEL]
        attrs = ((pooled - pooled.mean(-1, keepdim=True)) / scale * direction).sum(-1)  # [component batch]
        bias = norm.b @ m.W_U[:, LABEL] + m.b_U[LABEL]
        assert max_diff(attrs.sum(0) + bias, logits[:, LABEL]) < 1e-4, (
            type(m).__name__,
            max_diff(attrs.sum(0) + bias, logits[:, LABEL]),
        )


def test_token_grid_has_no_cls_and_follows_the_hf_embedding(model):
    """A region's positions are exactly the tokens whose HF patch embedding changes when its pixels change."""
    from transformers import VideoMAEForVideoClassification

    grid = model.grid
    assert grid.first == 0 and grid.cls is None and grid.n_tokens == grid.n_tubelets == model.cfg.n_pos
    assert grid.thw_to_pos(0, 0, 0) == 0 and grid.pos_to_thw(grid.n_tokens - 1) == tuple(s - 1 for s in grid.shape)
    hf = VideoMAEForVideoClassification(make_hf_videomae(seed=9).config).eval()
    x = pixels(model.cfg, batch=1, seed=1)
    y = x.clone()
    y[:, 4:6, :, 10:12, 17:25] += 1.0  # frames 4-5, rows 10-11, columns 17-24
    with torch.no_grad():
        changed = (hf.videomae.embeddings.patch_embeddings(y) - hf.videomae.embeddings.patch_embeddings(x)).abs()
    hit = changed.amax(-1)[0].nonzero().flatten()
    assert torch.equal(grid.positions(frames=range(4, 6), box=(17, 10, 25, 12)), hit)
    assert grid.to_grid(torch.arange(grid.n_tokens)).flatten().tolist() == list(range(grid.n_tokens))
    with pytest.raises(ValueError, match="no \\[CLS\\]"):
        grid.positions(frames=[0], include_cls=True)


def test_cache_save_and_load_keeps_the_architecture(model, pair, tmp_path):
    *_, clean_cache, _ = pair
    clean_cache.save(tmp_path / "cache.safetensors")
    loaded = type(clean_cache).load(tmp_path / "cache.safetensors")
    assert type(loaded.cfg) is type(model.cfg) and loaded.cfg.to_hf_dict() == model.cfg.to_hf_dict()
    assert list(loaded) == list(clean_cache) and torch.equal(loaded["hook_pooled"], clean_cache["hook_pooled"])
