"""A TransformerLens user's notebook, run on HookedViViT: TransformerLens idioms only, cell by cell.

Everything below is what one writes for a HookedTransformer (TL 4.3: `transformer_lens.utilities`
as `utils`, `transformer_lens.patching`, hooks as `fn(activation, hook)`, `partial`), with a video
clip where the tokens would be and [CLS] (position 0) where the last token would be. Each cell
checks its result against an identity or a second way of computing it.
"""

from __future__ import annotations

from functools import partial

import einops
import pytest
import torch

tl = pytest.importorskip("transformer_lens")
import transformer_lens.patching as patching  # noqa: E402
import transformer_lens.utilities as utils  # noqa: E402
from transformer_lens.utilities import Slice  # noqa: E402

from tests.conftest import pixels  # noqa: E402

ANSWER, WRONG = 3, 5


@pytest.fixture(scope="module")
def notebook(small_model):
    """Cell 1: the model, a clean and a corrupted input, both runs cached."""
    model = small_model
    torch.set_grad_enabled(False)
    try:
        clean = pixels(model.cfg, batch=1, seed=41)
        corrupted = clean.clone()
        corrupted[:, 4:, :, 8:24, 8:24] = pixels(model.cfg, batch=1, seed=42)[:, 4:, :, 8:24, 8:24]
        clean_logits, clean_cache = model.run_with_cache(clean)
        corrupted_logits, corrupted_cache = model.run_with_cache(corrupted)
    finally:
        torch.set_grad_enabled(True)

    def logit_diff(logits, answer=ANSWER, wrong=WRONG):
        return (logits[:, answer] - logits[:, wrong]).mean()

    return dict(model=model, clean=clean, corrupted=corrupted, clean_logits=clean_logits,
                corrupted_logits=corrupted_logits, clean_cache=clean_cache, corrupted_cache=corrupted_cache,
                logit_diff=logit_diff)  # fmt: skip


def test_cell_cache_indexing(notebook):
    cache, model = notebook["clean_cache"], notebook["model"]
    pattern = cache["pattern", 1]
    assert pattern.shape == (1, model.cfg.n_heads, model.cfg.n_ctx, model.cfg.n_ctx)
    assert cache[utils.get_act_name("pattern", 1)] is pattern and cache["attn", 1] is pattern
    assert torch.allclose(pattern.sum(-1), torch.ones(()))
    assert cache["scale", 2, "ln1"] is cache["blocks.2.ln1.hook_scale"] and cache["k1"] is cache["k", 1]
    assert cache["resid_post", -1] is cache["resid_post", model.cfg.n_layers - 1]
    names = list(cache.keys())
    assert names[0] == "hook_embed" and len(cache) == len(names)


def test_cell_logit_lens(notebook):
    cache, model = notebook["clean_cache"], notebook["model"]
    resid, labels = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=0, apply_ln=True, return_labels=True)
    layer_logits = resid @ model.W_U + model.b_U
    assert labels[-1] == "final_post" and len(labels) == 2 * model.cfg.n_layers + 1
    assert torch.allclose(layer_logits[-1], notebook["clean_logits"], atol=1e-5)


def test_cell_direct_logit_attribution(notebook):
    cache, model = notebook["clean_cache"], notebook["model"]
    direction = model.W_U[:, ANSWER] - model.W_U[:, WRONG]
    per_head = cache.stack_head_results(layer=-1, pos_slice=0, apply_ln=True)
    per_head_attr = einops.einsum(per_head, direction * model.ln_final.w, "comp batch d, d -> comp batch")
    raw = cache.stack_head_results(layer=-1, pos_slice=0)  # logit_attrs applies the frozen LayerNorm itself
    assert torch.allclose(per_head_attr, cache.logit_attrs(raw, ANSWER, WRONG, pos_slice=0), atol=1e-5)
    stack, labels = cache.decompose_resid(layer=-1, pos_slice=0, return_labels=True)
    attrs = cache.logit_attrs(stack, tokens=ANSWER, incorrect_tokens=WRONG, pos_slice=0)
    bias = model.ln_final.b @ direction + model.b_U[ANSWER] - model.b_U[WRONG]
    total = attrs.sum(0) + bias
    assert labels[:2] == ["embed", "pos_embed"]
    assert torch.allclose(total, notebook["logit_diff"](notebook["clean_logits"]), atol=1e-4)


def test_cell_head_ablation_with_a_hook(notebook):
    model, clean = notebook["model"], notebook["clean"]
    layer, head = 1, 2

    def ablate_head(z, hook, head_index):
        z[:, :, head_index, :] = 0.0
        return z

    hook_name = utils.get_act_name("z", layer)
    with torch.no_grad():
        ablated = model.run_with_hooks(clean, fwd_hooks=[(hook_name, partial(ablate_head, head_index=head))])
        model.add_hook(hook_name, partial(ablate_head, head_index=head))
        again = model(clean)
        model.reset_hooks()
        restored = model(clean)
        with model.hooks(fwd_hooks=[(hook_name, partial(ablate_head, head_index=head))]):
            in_context = model(clean)
    assert torch.equal(ablated, again) and torch.equal(ablated, in_context)
    assert torch.allclose(restored, notebook["clean_logits"], atol=1e-6)
    # the same ablation by hand: remove the head's write from the cached attention output and rerun from there
    cache = notebook["clean_cache"]
    write = cache["z", layer][:, :, head] @ model.W_O[layer, head]
    resid_mid = cache["resid_mid", layer] - write
    with torch.no_grad():
        block = model.blocks[layer]
        resid = resid_mid + block.mlp(block.ln2(resid_mid))
        by_hand = model(resid, start_at_layer=layer + 1)
    assert torch.allclose(ablated, by_hand, atol=1e-5)


def test_cell_activation_patching(notebook):
    model, corrupted, clean_cache = notebook["model"], notebook["corrupted"], notebook["clean_cache"]
    metric = notebook["logit_diff"]
    head_out = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)
    every = patching.get_act_patch_attn_head_all_pos_every(model, corrupted, clean_cache, metric)
    assert head_out.shape == (model.cfg.n_layers, model.cfg.n_heads) and torch.allclose(every[0], head_out)
    # patching every head of a layer at once is the same as patching that layer's attention output
    l = 1
    with torch.no_grad():
        def patch_all(z, hook):
            return clean_cache[hook.name]

        logits = model.run_with_hooks(corrupted, fwd_hooks=[(utils.get_act_name("z", l), patch_all)])
        attn = model.run_with_hooks(corrupted, fwd_hooks=[(utils.get_act_name("attn_out", l),
                                                          lambda a, hook: clean_cache[hook.name])])  # fmt: skip
    assert torch.allclose(logits, attn, atol=1e-5)
    clean_diff, corrupted_diff = metric(notebook["clean_logits"]), metric(notebook["corrupted_logits"])
    # patching the final residual stream restores the clean answer exactly
    resid = patching.generic_activation_patch(model, corrupted, clean_cache, metric, patching.layer_pos_patch_setter,
                                              "resid_post", index_df=_df([(model.cfg.n_layers - 1, 0)]))  # fmt: skip
    assert torch.allclose(resid[0], clean_diff, atol=1e-5) and not torch.allclose(clean_diff, corrupted_diff)


def _df(rows):
    import pandas as pd

    return pd.DataFrame(rows, columns=["layer", "pos"])


def test_cell_batch_slicing(notebook):
    model = notebook["model"]
    x = torch.cat([notebook["clean"], notebook["corrupted"]])
    _, cache = model.run_with_cache(x)
    second = cache.apply_slice_to_batch_dim(1)
    assert torch.equal(second["resid_pre", 2], notebook["corrupted_cache"]["resid_pre", 2][0])
    first = cache.apply_slice_to_batch_dim(Slice([0])).remove_batch_dim()
    assert first["z", 0].shape == notebook["clean_cache"]["z", 0].shape[1:]
    stack = first.stack_head_results(layer=-1, pos_slice=0, apply_ln=True)
    ref = notebook["clean_cache"].stack_head_results(layer=-1, pos_slice=0, apply_ln=True)[:, 0]
    assert torch.allclose(stack, ref, atol=1e-5)


def test_cell_neurons(notebook):
    cache, model = notebook["clean_cache"], notebook["model"]
    direction = model.W_U[:, ANSWER] - model.W_U[:, WRONG]
    neurons, labels = cache.stack_neuron_results(layer=-1, pos_slice=0, return_labels=True, apply_ln=True,
                                                 project_output_onto=direction * model.ln_final.w)  # fmt: skip
    assert labels[0] == "L0N0" and neurons.shape == (model.cfg.n_layers * model.cfg.d_mlp, 1)
    mlp = cache.decompose_resid(layer=-1, pos_slice=0, mode="mlp", incl_embeds=False, apply_ln=True)
    b_out = einops.einsum(model.b_out, direction * model.ln_final.w, "layer d, d -> layer")
    b_out = b_out - model.b_out.mean(-1) * (direction * model.ln_final.w).sum()
    per_layer = einops.reduce(neurons, "(layer neuron) batch -> layer batch", "sum", layer=model.cfg.n_layers)
    scale = cache["ln_final.hook_scale"][:, 0, 0]
    assert torch.allclose(per_layer + (b_out / scale)[:, None], mlp @ (direction * model.ln_final.w), atol=1e-4)
