"""ActivationCache: the activations of one run, by hook name, with TransformerLens-style analysis.

    logits, cache = model.run_with_cache(x)
    cache["blocks.3.hook_resid_post"] is cache["resid_post", 3]; cache["k6"] is cache["k", 6]   # as in TransformerLens
    attrs, labels = cache.dla_components("bowling")                      # direct logit attribution, sums to the logit
    cache.save("run.safetensors"); ActivationCache.load("run.safetensors")   # no model needed

Analysis methods follow TransformerLens' names, arguments and layouts (`accumulated_resid`,
`decompose_resid`, `stack_head_results`, `stack_neuron_results`, `get_full_resid_decomposition`,
`apply_ln_to_stack`, `logit_attrs`, `remove_batch_dim`, `apply_slice_to_batch_dim` ...). A cache
from `model.run_with_cache` knows its model (`cache.model`, as in TransformerLens) and reads the
weights it needs (W_O, W_U, W_out, the final LayerNorm) from it. A cache without a model (built
from a dict, or loaded from disk) takes `model=`, or uses weights stored with
`cache.with_weights(model)`, which are saved and loaded with the cache.

Our model does not fold LayerNorm weights into the next layer (TransformerLens' `fold_ln`), so:
`apply_ln_to_stack` centres and divides by the cached scale (as TransformerLens does), and
`logit_attrs` folds the final LayerNorm weight into the class direction (`w * W_U[:, c]`), which
is what TransformerLens computes on a folded model. The rest of the logit, `b_ln @ W_U[:, c] +
b_U[c]`, is `logit_bias`; attributions of all components plus it give the logit exactly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from vivit_lens.interp.cache_dla import ClassIndex, LogitAttribution, PosSlice, SliceLike
from vivit_lens.models.config import ViViTConfig
from vivit_lens.models.utils import get_act_name

WEIGHT_PREFIX = "__weights__."
WEIGHT_NAMES = ("W_O", "b_O", "W_U", "b_U", "readout_norm.w", "readout_norm.b")
_LEGACY_WEIGHT_NAMES = {"ln_final.w": "readout_norm.w", "ln_final.b": "readout_norm.b"}  # files before the readout


def _apply_pos(t: Tensor, pos_slice: PosSlice, dim: int) -> Tensor:
    """TransformerLens `Slice.apply`: None keeps all, an int selects (and drops the axis), else index."""
    if pos_slice is None:
        return t
    if isinstance(pos_slice, SliceLike):
        return pos_slice.apply(t, dim=dim)
    if isinstance(pos_slice, int):
        return t.select(dim, pos_slice)
    if isinstance(pos_slice, slice):
        index = [slice(None)] * t.ndim
        index[dim] = pos_slice
        return t[tuple(index)]
    return t.index_select(dim, torch.as_tensor(pos_slice, dtype=torch.long, device=t.device).reshape(-1))


_WEIGHTS = {
    "W_O": lambda m: m.W_O, "b_O": lambda m: m.b_O, "W_U": lambda m: m.W_U, "b_U": lambda m: m.b_U,
    "readout_norm.w": lambda m: m.readout_norm.w, "readout_norm.b": lambda m: m.readout_norm.b,
    "W_out": lambda m: m.W_out, "b_out": lambda m: m.b_out,
}  # fmt: skip


def _weights_of(model) -> dict[str, Tensor]:
    return {name: _WEIGHTS[name](model).detach() for name in WEIGHT_NAMES}


class ActivationCache(LogitAttribution, Mapping[str, Tensor]):
    """A mapping from hook names to activations (and `name + "_grad"` for gradients).

    `ActivationCache(cache_dict, model, has_batch_dim=True)` as in TransformerLens; `model` may
    also be just a `ViViTConfig` (or None) for a cache whose weights come from elsewhere.
    `has_batch_dim` is False after `remove_batch_dim()` or an int `apply_slice_to_batch_dim`.
    """

    def __init__(self, cache: dict[str, Tensor], model=None, has_batch_dim: bool = True, *,
                 config: ViViTConfig | None = None, weights: dict[str, Tensor] | None = None):  # fmt: skip
        if isinstance(model, ViViTConfig):
            model, config = None, model
        self._cache = cache
        self.model = model
        self.cfg = config if config is not None else getattr(model, "cfg", None)
        self._weights = weights
        self.has_batch_dim = has_batch_dim

    @property
    def cache_dict(self) -> dict[str, Tensor]:
        """The underlying dict (TransformerLens' attribute name)."""
        return self._cache

    @property
    def has_embed(self) -> bool:
        return "hook_embed" in self._cache

    @property
    def has_pos_embed(self) -> bool:
        return "hook_pos_embed" in self._cache

    def _key(self, key: str | tuple) -> str:
        """A hook name for a full name, a TransformerLens short or compact name, or a `(name, layer, sublayer)` tuple."""
        if isinstance(key, tuple):
            if len(key) > 1 and isinstance(key[1], int) and key[1] < 0 and self.cfg is not None:
                key = (key[0], self.cfg.n_layers + key[1], *key[2:])  # negative layers count from the end
            return get_act_name(*key)
        if key in self._cache:
            return key
        try:
            return get_act_name(key)
        except ValueError:
            return key

    def __getitem__(self, key: str | tuple) -> Tensor:
        name = self._key(key)
        try:
            return self._cache[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, self._cache, n=5, cutoff=0.5)
            hint = f"; closest cached names: {close}" if close else f"; the cache holds {len(self)} activations"
            raise KeyError(f"{name!r} is not in the cache{hint}") from None

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, (str, tuple)):
            return False
        try:
            return self._key(key) in self._cache
        except ValueError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._cache)

    def __len__(self) -> int:
        return len(self._cache)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations: {list(self._cache)[:4]}{' ...' if len(self) > 4 else ''})"

    def _same(self, cache: dict[str, Tensor], has_batch_dim: bool | None = None) -> ActivationCache:
        """A cache of other tensors with this one's model, config and stored weights."""
        hb = self.has_batch_dim if has_batch_dim is None else has_batch_dim
        return ActivationCache(cache, self.model, hb, config=self.cfg, weights=self._weights)

    def to(self, device: str | torch.device) -> ActivationCache:
        """Move every activation (and stored weight) to `device`, in place, and return the cache (TransformerLens)."""
        self._cache = {k: v.to(device) for k, v in self._cache.items()}
        if self._weights:
            self._weights = {k: v.to(device) for k, v in self._weights.items()}
        return self

    # Batch axis (TransformerLens) ------------------------------------------------------------
    def _batch_size(self) -> int:
        sizes = [v.shape[0] for v in self._cache.values() if v.ndim > 0]
        return max(set(sizes), key=sizes.count) if sizes else 1

    def remove_batch_dim(self, batch_size: int | None = None) -> ActivationCache:
        """Drop the batch axis of a batch-1 cache, in place (TransformerLens); a larger batch is a ValueError."""
        if not self.has_batch_dim:
            return self
        batch_size = self._batch_size() if batch_size is None else batch_size
        if batch_size != 1:
            raise ValueError(f"cannot remove the batch axis of a cache of {batch_size} examples; "
                             "use apply_slice_to_batch_dim(i) to keep example i")  # fmt: skip
        self._cache = {k: v[0] if v.ndim > 0 and v.shape[0] == 1 else v for k, v in self._cache.items()}
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice: PosSlice) -> ActivationCache:
        """A new cache of some examples: an int keeps one (and drops the batch axis), a slice or list keeps several."""
        if not self.has_batch_dim:
            raise ValueError("this cache has no batch axis to slice")
        n = self._batch_size()
        cache = {k: _apply_pos(v, batch_slice, 0) if v.ndim > 0 and v.shape[0] == n else v
                 for k, v in self._cache.items()}  # fmt: skip
        one = isinstance(batch_slice, int) or getattr(batch_slice, "mode", None) == "int"
        return self._same(cache, has_batch_dim=not one)

    def toggle_autodiff(self, mode: bool = False) -> None:
        """`torch.set_grad_enabled(mode)`: global state, as in TransformerLens (prefer `torch.no_grad()` blocks)."""
        logging.getLogger("vivit_lens.cache").warning("changed the global state: autodiff set to %s", mode)
        torch.set_grad_enabled(mode)

    # Saving ------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the cache (and the model config and stored weights, if any) to one safetensors file."""
        meta = {"config": json.dumps(self.cfg.to_hf_dict())} if self.cfg is not None else {}
        meta["order"] = json.dumps(list(self._cache))  # safetensors files list tensors by name; keep hook order
        meta["has_batch_dim"] = json.dumps(self.has_batch_dim)
        items = list(self._cache.items()) + [(WEIGHT_PREFIX + k, v) for k, v in (self._weights or {}).items()]
        tensors, storages = {}, set()
        for k, v in items:  # one tensor can sit under two names (resid_post l is resid_pre l+1): write copies
            v = v.detach().contiguous()
            ptr = v.untyped_storage().data_ptr()
            tensors[k] = v.clone() if ptr in storages else v
            storages.add(ptr)
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> ActivationCache:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        from vivit_lens.models.auto import config_from_hf_dict

        cfg = config_from_hf_dict(json.loads(meta["config"])) if "config" in meta else None
        tensors = load_file(str(path))
        weights = {k[len(WEIGHT_PREFIX):]: v for k, v in tensors.items() if k.startswith(WEIGHT_PREFIX)}
        weights = {_LEGACY_WEIGHT_NAMES.get(k, k): v for k, v in weights.items()}
        order = json.loads(meta["order"]) if "order" in meta else sorted(tensors)
        acts = {k: tensors[k] for k in order if not k.startswith(WEIGHT_PREFIX)}
        has_batch_dim = json.loads(meta.get("has_batch_dim", "true"))
        return cls(acts, None, has_batch_dim, config=cfg, weights=weights or None)

    # Weights and config ------------------------------------------------------------------------
    def with_weights(self, model) -> ActivationCache:
        """The same activations, plus the few weights analysis needs (W_O, b_O, W_U, b_U, the readout's LayerNorm).

        Stored weights travel with `save`/`load`, so a loaded cache can attribute without the model.
        """
        return ActivationCache(self._cache, self.model, self.has_batch_dim,
                               config=self.cfg if self.cfg is not None else model.cfg, weights=_weights_of(model))  # fmt: skip

    @property
    def has_weights(self) -> bool:
        return self._weights is not None

    def _w(self, model, name: str) -> Tensor:
        """A weight from `model=`, else from the cache's own model, else from the stored weights."""
        model = model if model is not None else self.model
        if model is not None:
            return _WEIGHTS[name](model).detach()
        if self._weights is None or name not in self._weights:
            raise ValueError(
                f"this needs the model's weights ({name}): pass model=..., or use cache = cache.with_weights(model)"
            )
        return self._weights[name]

    def _config(self) -> ViViTConfig:
        if self.cfg is None:
            raise ValueError("this cache has no model config; build it with model.run_with_cache")
        return self.cfg

    def _layer(self, layer: int | None) -> int:
        n = self._config().n_layers
        if layer is None or layer == -1:
            return n
        if not 0 <= layer <= n:
            raise ValueError(f"layer must be in [0, {n}] (or -1/None for the final residual), got {layer}")
        return layer

    def _class_direction(self, tokens: ClassIndex, model) -> Tensor:
        """`W_U[:, c]` for a class index, a label name, or a `[batch]` tensor of indices (-> `[batch d_model]`)."""
        W_U = self._w(model, "W_U")
        if isinstance(tokens, str):
            label2id = self._config().label2id
            if tokens not in label2id:
                raise KeyError(f"class {tokens!r} is not one of the model's {len(label2id)} labels")
            tokens = label2id[tokens]
        if isinstance(tokens, Tensor):
            return W_U[:, tokens.to(torch.long)].T if tokens.ndim else W_U[:, int(tokens)]
        if not 0 <= int(tokens) < W_U.shape[1]:
            raise ValueError(f"class index {tokens} is out of range for {W_U.shape[1]} classes")
        return W_U[:, int(tokens)]

    # Residual stream ---------------------------------------------------------------------------
    def ln_scale(self, layer: int | None = None, mlp_input: bool = False) -> Float[Tensor, "*batch pos 1"]:
        """The LayerNorm divisor `sqrt(var + eps)` that `layer` applies (`layer=n_layers`/None: the readout's norm).

        Read from the cached `hook_scale`, or computed from the cached residual it normalises. A readout norm
        that sees one vector per clip (VideoMAE's `fc_norm` of the token mean) has one scale per clip: `[*batch 1]`.
        """
        cfg, layer = self._config(), self._layer(layer)
        n = cfg.n_layers
        eps = cfg.layer_norm_eps
        if layer == n:
            if mlp_input:
                raise ValueError("mlp_input=True has no meaning for the final LayerNorm (layer = n_layers)")
            key, resid = f"{cfg.readout_norm_name}.hook_scale", f"blocks.{n - 1}.hook_resid_post"
            eps = cfg.readout_norm_eps
        else:
            key = f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"
            resid = f"blocks.{layer}.hook_resid_{'mid' if mlp_input else 'pre'}"
        if key in self._cache:
            return self._cache[key]
        if resid in self._cache:
            x = self._cache[resid]
            if layer == n and cfg.readout_norm_pooled:
                x = _apply_pos(x, list(cfg.readout_positions), -2).mean(-2)
            x = x - x.mean(-1, keepdim=True)
            return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        raise KeyError(f"neither {key!r} nor {resid!r} is in the cache; the LayerNorm scale is needed here")

    def readout_scale(self) -> Float[Tensor, "*batch"]:
        """The readout norm's divisor for each clip (the classifier's input is `norm(mean over readout positions)`),
        as the cached run used it: what direct logit attribution freezes."""
        cfg = self._config()
        scale = self.ln_scale(None)
        if cfg.readout_norm_pooled:
            return scale[..., 0]
        positions = cfg.readout_positions
        if len(positions) != 1:
            raise ValueError(f"a readout over {len(positions)} positions needs a pooled readout norm (one scale per "
                             f"clip); {cfg.readout_norm_name} normalises each position")  # fmt: skip
        return scale[..., positions[0], 0]

    def _final_scale(self, stack_ndim: int, pos_slice: PosSlice, batch_slice: PosSlice, stack_has_batch: bool) -> Tensor:
        """The readout norm's frozen scale, shaped to divide a stack of `stack_ndim` axes (`[component *batch_and_pos
        d_model]`) whose positions are `pos_slice`: per position, or one per clip for a pooled readout norm."""
        scale = self.ln_scale(None)
        if not self._config().readout_norm_pooled:
            scale = _apply_pos(scale, pos_slice, -2)
            return self._example_scale(scale, batch_slice, stack_has_batch) if self.has_batch_dim else scale
        if self.has_batch_dim:
            scale = self._example_scale(scale, batch_slice, stack_has_batch)  # [batch 1], or [1] for one clip
        return scale.reshape(*scale.shape[:-1], *[1] * (stack_ndim - scale.ndim))

    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "component *batch_and_pos d_model"],
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: PosSlice = None,
        batch_slice: PosSlice = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
        model=None,
    ) -> Float[Tensor, "component *batch_and_pos_out d_model"]:
        """Treat each component of a residual stack as the input of a LayerNorm with its scale frozen.

        Centres each component and divides it by the scale the cached run used at `layer` (ln1, or
        ln2 with `mlp_input`; `layer=None`/`n_layers`: ln_final), so the components add up to the
        normalised residual minus the LayerNorm bias, times 1/w. `pos_slice` and `batch_slice` say
        which positions/batch rows the stack holds (the stack is taken as already sliced; the scale
        is sliced here). For the logit, the relevant final scale is the readout's: on ViViT the [CLS]
        token's, `pos_slice=0`; a pooled readout norm (VideoMAE's `fc_norm`) has one scale per clip, which
        divides every position of the stack.

        `recompute_ln=True` (final layer only): apply the full readout LayerNorm (weight and bias
        included) to each component on its own, with its own statistics: the logit lens.
        """
        layer = self._layer(layer)
        if has_batch_dim and batch_slice is not None:
            residual_stack = _apply_pos(residual_stack, batch_slice, 1)
        if recompute_ln:
            if layer != self._config().n_layers:
                raise ValueError("recompute_ln=True is only defined for the final LayerNorm (layer = n_layers)")
            w, b = self._w(model, "readout_norm.w"), self._w(model, "readout_norm.b")
            return F.layer_norm(residual_stack, (residual_stack.shape[-1],), w, b, self._config().readout_norm_eps)
        if layer == self._config().n_layers:
            scale = self._final_scale(residual_stack.ndim, pos_slice, batch_slice, has_batch_dim)
        else:
            scale = _apply_pos(self.ln_scale(layer, mlp_input), pos_slice, -2)
            if self.has_batch_dim:
                scale = self._example_scale(scale, batch_slice, has_batch_dim)
        return (residual_stack - residual_stack.mean(-1, keepdim=True)) / scale

    def _example_scale(self, scale: Tensor, batch_slice: PosSlice, stack_has_batch: bool) -> Tensor:
        """The LayerNorm scale `[batch ...]` of the examples a stack holds.

        A stack with a batch axis holds the examples `batch_slice` picks (all by default). A stack
        without one belongs to a single example: `batch_slice=i` says which, and a batch-1 cache
        needs none; otherwise which example's scale to use is ambiguous, and that is a ValueError.
        """
        if stack_has_batch:
            return scale if batch_slice is None else _apply_pos(scale, batch_slice, 0)
        if isinstance(batch_slice, int):
            return scale[batch_slice]
        if scale.shape[0] != 1:
            raise ValueError(
                f"the stack has no batch axis but this cache holds {scale.shape[0]} examples, each with its own "
                "LayerNorm scale: pass batch_slice=i (an int) for example i, or slice the cache first "
                "(cache.apply_slice_to_batch_dim(i))"
            )
        return scale[0]

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        mlp_input: bool = False,
        return_labels: bool = False,
        model=None,
    ) -> Float[Tensor, "component *batch_and_pos d_model"] | tuple[Tensor, list[str]]:
        """The residual stream at the input of every layer up to `layer` (logit lens), stacked.

        Entries: `blocks.{l}.hook_resid_pre` for l < layer (labels `"{l}_pre"`), with `incl_mid`
        also `"{l}_mid"`, with `mlp_input` the mid of `layer` itself; `layer=None`/`-1`/n_layers
        ends with the final residual before ln_final (`"final_post"`). `apply_ln` at the final
        layer applies the whole final LayerNorm to each entry (its own statistics, weight and bias:
        `stack[-1][:, 0] @ W_U + b_U` are the logits); at an earlier layer it divides by that
        layer's cached ln1 scale, as TransformerLens does.
        """
        n = self._config().n_layers
        layer = self._layer(layer)
        parts, labels = [], []
        for l in range(layer + 1):
            if l == n:
                parts.append(self[f"blocks.{n - 1}.hook_resid_post"])
                labels.append("final_post")
                continue
            parts.append(self[f"blocks.{l}.hook_resid_pre"])
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self[f"blocks.{l}.hook_resid_mid"])
                labels.append(f"{l}_mid")
        stack = torch.stack([_apply_pos(p, pos_slice, -2) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice,
                                           recompute_ln=layer == n, model=model)  # fmt: skip
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: Literal["all", "mlp", "attn"] = "all",
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Float[Tensor, "component *batch_and_pos d_model"] | tuple[Tensor, list[str]]:
        """The residual stream at the input of `layer` as a stack of what wrote it.

        `embed`, `pos_embed`, then `{l}_attn_out` and `{l}_mlp_out` for l < layer (each includes its
        bias), and `{layer}_attn_out` with `mlp_input`. The stack sums to `blocks.{layer}.hook_resid_pre`
        (the final residual for `layer=None`). `apply_ln` divides by that layer's cached scale.
        """
        if mode not in ("all", "mlp", "attn"):
            raise ValueError(f"mode must be 'all', 'mlp' or 'attn', got {mode!r}")
        layer = self._layer(layer)
        parts, labels = [], []
        if incl_embeds:
            parts += [self["hook_embed"], self["hook_pos_embed"]]
            labels += ["embed", "pos_embed"]
        for l in range(layer):
            if mode != "mlp":
                parts.append(self[f"blocks.{l}.hook_attn_out"])
                labels.append(f"{l}_attn_out")
            if mode != "attn":
                parts.append(self[f"blocks.{l}.hook_mlp_out"])
                labels.append(f"{l}_mlp_out")
        if mlp_input and mode != "mlp":
            parts.append(self[f"blocks.{layer}.hook_attn_out"])
            labels.append(f"{layer}_attn_out")
        stack = torch.stack([_apply_pos(p, pos_slice, -2) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_head_results(
        self,
        layer: int | None = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: PosSlice = None,
        apply_ln: bool = False,
        model=None,
    ) -> Float[Tensor, "component *batch_and_pos d_model"] | tuple[Tensor, list[str]]:
        """What each attention head of the layers before `layer` wrote: `[layer*head batch pos d_model]`.

        Head h of layer l writes `z[:, :, h] @ W_O[l, h]` (labels `"L{l}H{h}"`, layer-major), computed
        with one einsum per layer from the cached `hook_z` (or read from `hook_result` if cached);
        `b_O` belongs to no head. `incl_remainder` appends the rest of the residual at `layer`
        (`"remainder"`), so that the stack sums to it. `pos_slice` is applied before the einsum.
        """
        cfg = self._config()
        layer = self._layer(layer)
        parts, labels = [], []
        for l in range(layer):
            result_key = f"blocks.{l}.attn.hook_result"
            if result_key in self._cache:
                per_head = rearrange(_apply_pos(self._cache[result_key], pos_slice, -3),
                                     "... head d_model -> head ... d_model")  # fmt: skip
            else:
                z = _apply_pos(self[f"blocks.{l}.attn.hook_z"], pos_slice, -3)
                per_head = einsum(z, self._w(model, "W_O")[l].to(z), "... head d_head, head d_head d_model -> head ... d_model")
            parts.append(per_head)
            labels += [f"L{l}H{h}" for h in range(cfg.n_heads)]
        if parts:
            stack = torch.cat(parts)
        else:
            like = _apply_pos(self["hook_embed"], pos_slice, -2)
            stack = like.new_zeros(0, *like.shape)
        if incl_remainder:
            resid = self.accumulated_resid(layer, pos_slice=pos_slice)[-1]
            stack = torch.cat([stack, (resid - stack.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_activation(self, activation_name: str, layer: int | None = -1, sublayer_type: str | None = None) -> Tensor:
        """`torch.stack` of one activation over the layers before `layer`: `[layer ...]`."""
        return torch.stack([self[(activation_name, l, sublayer_type)] for l in range(self._layer(layer))])

    def compute_head_results(self, model=None) -> None:
        """Add `blocks.{l}.attn.hook_result` (`[batch pos head d_model]`, what each head writes, b_O excluded)
        for every layer that lacks it, from `hook_z` and W_O (TransformerLens; the cache grows in place)."""
        W_O = self._w(model, "W_O")
        for l in range(self._config().n_layers):
            key = f"blocks.{l}.attn.hook_result"
            if key not in self._cache:
                z = self[f"blocks.{l}.attn.hook_z"]
                self._cache[key] = einsum(z, W_O[l].to(z), "... head d_head, head d_head d_model -> ... head d_model")

    # Neurons -----------------------------------------------------------------------------------
    def get_neuron_results(
        self,
        layer: int,
        neuron_slice: PosSlice = None,
        pos_slice: PosSlice = None,
        project_output_onto: Tensor | None = None,
        model=None,
    ) -> Float[Tensor, "*batch_and_pos neuron out"]:
        """What each MLP neuron of `layer` writes to the residual stream: `post[..., n] * W_out[n]` (b_out excluded).

        `[*batch_and_pos neuron d_model]`; with `project_output_onto` (`[d_model]` or `[d_model k]`)
        the write is projected first (`[... neuron]` or `[... neuron k]`), never materialising d_model.
        """
        acts = _apply_pos(self[f"blocks.{layer}.mlp.hook_post"], pos_slice, -2)
        W_out = self._w(model, "W_out")[layer].to(acts)
        acts, W_out = _apply_pos(acts, neuron_slice, -1), _apply_pos(W_out, neuron_slice, 0)
        if project_output_onto is None:
            return acts[..., None] * W_out
        projected = W_out @ project_output_onto.to(W_out)
        return acts * projected if project_output_onto.ndim == 1 else acts[..., None] * projected

    def stack_neuron_results(
        self,
        layer: int | None,
        pos_slice: PosSlice = None,
        neuron_slice: PosSlice = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
        project_output_onto: Tensor | None = None,
        mlp_input: bool = False,
        model=None,
    ) -> Float[Tensor, "component *batch_and_pos out"] | tuple[Tensor, list[str]]:
        """Every neuron's write of the layers before `layer`, stacked: `[layer*neuron *batch_and_pos d_model]`.

        Labels `"L{l}N{n}"`. `incl_remainder` adds the rest of the residual that `layer` reads
        (`resid_mid` with `mlp_input`, else `resid_pre`), so that the stack sums to it. `apply_ln`
        divides by that LayerNorm's cached scale (after centring); with `project_output_onto` the
        projection is applied in closed form, `(a/s) * (W_out[n] @ p - mean(W_out[n]) * sum(p))`.
        """
        cfg, layer = self._config(), self._layer(layer)
        if isinstance(neuron_slice, int):
            neuron_slice = [neuron_slice]  # layers are concatenated along the neuron axis: keep it
        p2d = None if project_output_onto is None else project_output_onto.reshape(cfg.d_model, -1)
        neurons = _apply_pos(torch.arange(cfg.d_mlp), neuron_slice, 0).tolist()
        labels = [f"L{l}N{n}" for l in range(layer) for n in neurons]
        parts = []
        for l in range(layer):
            if apply_ln and p2d is not None:
                acts = _apply_pos(_apply_pos(self[f"blocks.{l}.mlp.hook_post"], pos_slice, -2), neuron_slice, -1)
                W = _apply_pos(self._w(model, "W_out")[l].to(acts), neuron_slice, 0)
                p = p2d.to(W)
                linear = W @ p - W.mean(-1, keepdim=True) * p.sum(0)  # [neuron k]
                parts.append(acts[..., None] * linear)
            else:
                parts.append(self.get_neuron_results(l, neuron_slice, pos_slice, p2d, model=model))
        like = _apply_pos(self["hook_embed"], pos_slice, -2)
        out_dim = cfg.d_model if p2d is None else p2d.shape[1]
        if parts:
            stack = rearrange(torch.cat(parts, dim=-2), "... neuron out -> neuron ... out")
        else:
            stack = like.new_zeros(0, *like.shape[:-1], out_dim)
        if apply_ln and p2d is not None:
            stack = stack / self._stack_scale(layer, mlp_input, pos_slice, stack.ndim)
        elif apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        if incl_remainder:
            target = _apply_pos(self[f"blocks.{layer}.hook_resid_mid"] if mlp_input else self._resid_at(layer),
                                pos_slice, -2)[None]  # fmt: skip
            if apply_ln:
                target = self.apply_ln_to_stack(target, layer, mlp_input=mlp_input, pos_slice=pos_slice)
            if p2d is not None:
                target = target @ p2d.to(target)
            stack = torch.cat([stack, target - stack.sum(0, keepdim=True)])
            labels.append("remainder")
        if project_output_onto is not None and project_output_onto.ndim == 1:
            stack = stack[..., 0]
        return (stack, labels) if return_labels else stack

    def _resid_at(self, layer: int) -> Tensor:
        """The residual stream at the input of `layer` (the final residual for `layer = n_layers`)."""
        n = self._config().n_layers
        return self[f"blocks.{n - 1}.hook_resid_post"] if layer == n else self[f"blocks.{layer}.hook_resid_pre"]

    def _stack_scale(self, layer: int, mlp_input: bool, pos_slice: PosSlice, stack_ndim: int) -> Tensor:
        if layer == self._config().n_layers:
            return self._final_scale(stack_ndim, pos_slice, None, True)
        scale = _apply_pos(self.ln_scale(layer, mlp_input), pos_slice, -2)
        return self._example_scale(scale, None, True) if self.has_batch_dim else scale

    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        return_labels: bool = False,
        project_output_onto: Tensor | None = None,
        model=None,
    ) -> Float[Tensor, "component *batch_and_pos out"] | tuple[Tensor, list[str]]:
        """The residual at the input of `layer` as every head, every neuron (or MLP), embed, pos_embed and bias.

        TransformerLens' order and labels: `L{l}H{h}` (heads of layers before `layer`, and of `layer`
        itself with `mlp_input`), `L{l}N{n}` (or `{l}_mlp_out` without `expand_neurons`), `embed`,
        `pos_embed`, `bias` (every b_O, and every b_out when neurons are expanded). The stack sums to
        that residual exactly. `apply_ln` divides by that LayerNorm's cached scale; `project_output_onto`
        (`[d_model]` or `[d_model k]`) projects every component (neurons in closed form).
        """
        cfg, layer = self._config(), self._layer(layer)
        if mlp_input and layer == cfg.n_layers:
            raise ValueError("mlp_input=True has no meaning for the final residual (layer = n_layers)")
        p2d = None if project_output_onto is None else project_output_onto.reshape(cfg.d_model, -1)

        def finish(stack: Tensor) -> Tensor:  # LayerNorm (frozen scale), then the projection
            if apply_ln:
                stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
            return stack if p2d is None else stack @ p2d.to(stack)

        heads, labels = self.stack_head_results(layer + int(mlp_input), return_labels=True, pos_slice=pos_slice,
                                                model=model)  # fmt: skip
        parts = [finish(heads)]
        if expand_neurons:
            neurons, n_labels = self.stack_neuron_results(layer, pos_slice, return_labels=True, apply_ln=apply_ln,
                                                          project_output_onto=p2d, mlp_input=mlp_input, model=model)  # fmt: skip
            parts.append(neurons)  # normalised and projected already
        else:
            mlps, n_labels = self.decompose_resid(layer, mode="mlp", pos_slice=pos_slice, incl_embeds=False,
                                                  return_labels=True)  # fmt: skip
            parts.append(finish(mlps))
        labels += n_labels
        embeds = [(name, f"hook_{name}") for name in ("embed", "pos_embed") if f"hook_{name}" in self._cache]
        for name, key in embeds:
            parts.append(finish(_apply_pos(self[key], pos_slice, -2)[None]))
            labels.append(name)
        bias = self._w(model, "b_O")[: layer + int(mlp_input)].sum(0)  # b_O belongs to no head
        if expand_neurons:
            bias = bias + self._w(model, "b_out")[:layer].sum(0)  # b_out to no neuron
        parts.append(finish(bias.to(heads).expand(1, *heads.shape[1:-1], cfg.d_model)))
        labels.append("bias")
        stack = torch.cat(parts)
        if project_output_onto is not None and project_output_onto.ndim == 1:
            stack = stack[..., 0]
        return (stack, labels) if return_labels else stack

    # Token grid --------------------------------------------------------------------------------
    def to_grid(self, values: Float[Tensor, "*rest pos"]) -> Float[Tensor, "*rest t h w"]:
        """Values over token positions `[..., pos]` as a video grid `[..., t, h, w]` ([CLS] dropped).

        Token `pos = 1 + t*H*W + h*W + w` (time-major, then row, then column): `vivit_lens.grid`.
        """
        return self._grid().to_grid(values)

    def per_frame(self, values: Float[Tensor, "*rest pos"]) -> Float[Tensor, "*rest t"]:
        """Values over token positions summed per tubelet time (input frames `t*tt .. t*tt+tt-1`)."""
        return self._grid().per_frame(values)

    def per_location(self, values: Float[Tensor, "*rest pos"]) -> Float[Tensor, "*rest h w"]:
        """Values over token positions summed over time, per spatial patch location."""
        return self.to_grid(values).sum(-3)

    def _grid(self):
        from vivit_lens.models.grid import TokenGrid

        return TokenGrid(self._config())
