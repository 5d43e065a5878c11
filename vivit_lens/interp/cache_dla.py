"""Direct logit attribution on an ActivationCache, through the model's readout (a mixin of ActivationCache).

The classifier reads `norm(mean of the final residual over cfg.readout_positions)`: [CLS] after ln_final on
ViViT, `fc_norm` of the token mean on a mean-pooled VideoMAE. With the norm's scale frozen at the run's value
the logit is linear in the residual, so each component's attribution is the mean over the readout positions
of its per-position attribution, and the components plus `logit_bias` sum to the logit exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, Union, runtime_checkable

import torch
from einops import einsum, rearrange
from jaxtyping import Float
from torch import Tensor

@runtime_checkable
class SliceLike(Protocol):
    """TransformerLens' `Slice` (anything with `.apply(tensor, dim)` and a `.mode`)."""

    mode: str

    def apply(self, tensor: Tensor, dim: int = 0) -> Tensor: ...


PosSlice = Union[None, int, slice, Sequence[int], Tensor, SliceLike]
ClassIndex = Union[int, str, Tensor]


class LogitAttribution:
    """`logit_attrs`, `logit_bias`, `dla_*` and the readout's attention, for ActivationCache (which provides
    `_config`, `_w`, `_class_direction`, `apply_ln_to_stack`, `decompose_resid`, `stack_head_results`,
    `readout_scale` and the cached activations)."""

    # Logit attribution -------------------------------------------------------------------------
    def logit_attrs(
        self,
        residual_stack: Float[Tensor, "component *batch_and_pos d_model"],
        tokens: ClassIndex,
        incorrect_tokens: ClassIndex | None = None,
        pos_slice: PosSlice = None,
        batch_slice: PosSlice = None,
        has_batch_dim: bool = True,
        model=None,
    ) -> Float[Tensor, "component *batch_and_pos_out"]:
        """Direct logit attribution: how much each stack component adds to class `tokens`' logit.

        `attr_i = <(x_i - mean(x_i)) / s, w_ln * W_U[:, c]>` with `s` the readout norm's scale
        cached for the run (frozen; `pos_slice` selects it for a per-position norm: ViViT's logit reads
        [CLS], `pos_slice=0`; a pooled norm has one per clip), `w_ln` that norm's weight. With
        `incorrect_tokens`, the direction is the difference of the two classes' (logit difference
        attribution). For a stack at the readout positions that sums to the final residual there, the
        mean of `attrs` over those positions plus `logit_bias(...)` is the logit (difference) exactly
        (`readout_attrs` does this).
        `tokens`: a class index, a label name, or a `[batch]` tensor of indices (one per clip).
        """
        direction = self._class_direction(tokens, model)
        if incorrect_tokens is not None:
            other = self._class_direction(incorrect_tokens, model)
            if other.shape != direction.shape:
                raise ValueError(f"tokens and incorrect_tokens give different shapes: {direction.shape} vs {other.shape}")
            direction = direction - other
        direction = direction * self._w(model, "readout_norm.w")
        scaled = self.apply_ln_to_stack(residual_stack, None, pos_slice=pos_slice, batch_slice=batch_slice,
                                        has_batch_dim=has_batch_dim)  # fmt: skip
        if direction.ndim == 2:  # one class per batch row: broadcast over the positions after the batch axis
            direction = direction.reshape(direction.shape[0], *[1] * (scaled.ndim - 3), direction.shape[1])
        return (scaled * direction.to(scaled)).sum(-1)

    def logit_bias(self, tokens: ClassIndex, incorrect_tokens: ClassIndex | None = None, model=None) -> Tensor:
        """The part of the logit no component writes: `b_ln @ W_U[:, c] + b_U[c]` (a difference with `incorrect_tokens`)."""
        def one(t: ClassIndex) -> Tensor:
            d = self._class_direction(t, model)
            b_U = self._w(model, "b_U")
            idx = self._config().label2id[t] if isinstance(t, str) else t
            return d @ self._w(model, "readout_norm.b") + b_U[torch.as_tensor(idx, dtype=torch.long)]

        return one(tokens) - one(incorrect_tokens) if incorrect_tokens is not None else one(tokens)

    # Direct logit attribution, ready-made ------------------------------------------------------
    def dla_components(
        self, tokens: ClassIndex, incorrect_tokens: ClassIndex | None = None, model=None
    ) -> tuple[Float[Tensor, "component batch"], list[str]]:
        """DLA of every writer to the readout ([CLS] on ViViT, the token mean on VideoMAE): embed, pos_embed,
        each attn_out and mlp_out, and `bias`.

        The rows sum to the logit (or logit difference) of each clip exactly: the readout norm's scale
        is frozen at the run's value, and `bias` is `logit_bias`.
        """
        positions = list(self._config().readout_positions)
        stack, labels = self.decompose_resid(pos_slice=positions, return_labels=True)
        attrs = self.readout_attrs(stack, tokens, incorrect_tokens, model=model)
        bias = self.logit_bias(tokens, incorrect_tokens, model=model).to(attrs).expand(attrs.shape[1])
        return torch.cat([attrs, bias[None]]), labels + ["bias"]

    def dla_heads(
        self, tokens: ClassIndex, incorrect_tokens: ClassIndex | None = None, model=None
    ) -> Float[Tensor, "layer head batch"]:
        """DLA of each attention head's write to the readout (b_O excluded): `[layer head batch]`."""
        cfg = self._config()
        stack = self.stack_head_results(pos_slice=list(cfg.readout_positions), model=model)
        attrs = self.readout_attrs(stack, tokens, incorrect_tokens, model=model)
        return rearrange(attrs, "(layer head) batch -> layer head batch", head=cfg.n_heads)

    def readout_attrs(
        self,
        residual_stack: Float[Tensor, "component *batch readout_pos d_model"],
        tokens: ClassIndex,
        incorrect_tokens: ClassIndex | None = None,
        model=None,
    ) -> Float[Tensor, "component *batch"]:
        """DLA through the readout of a stack taken at the readout positions (`pos_slice=list(readout_positions)`).

        The readout is `norm(mean over readout positions)`: linear up to the norm's scale, frozen here, so each
        component's attribution is the mean over those positions of its per-position `logit_attrs`.
        """
        positions = list(self._config().readout_positions)
        if residual_stack.shape[-2] != len(positions):
            raise ValueError(f"the stack must hold the {len(positions)} readout position(s) on axis -2 "
                             f"(pos_slice=list(readout_positions)), got shape {tuple(residual_stack.shape)}")  # fmt: skip
        attrs = self.logit_attrs(residual_stack, tokens, incorrect_tokens, pos_slice=positions,
                                 has_batch_dim=self.has_batch_dim, model=model)  # fmt: skip
        return attrs.mean(-1)

    def readout_attention_row(self, layer: int) -> Float[Tensor, "batch head pos"]:
        """Attention of the readout on every token in `layer`: the attention rows of the readout positions' queries,
        averaged over them (ViViT: the [CLS] row). From the cached pattern, or rebuilt from q and k."""
        positions = list(self._config().readout_positions)
        pattern_key = f"blocks.{layer}.attn.hook_pattern"
        if pattern_key in self._cache:
            return self._cache[pattern_key][:, :, positions].mean(2)
        q, k = self[f"blocks.{layer}.attn.hook_q"], self[f"blocks.{layer}.attn.hook_k"]
        scores = einsum(q[:, positions], k, "batch q head d_head, batch pos head d_head -> batch head q pos")
        return torch.softmax(scores * q.shape[-1] ** -0.5, dim=-1).mean(2)

    cls_attention_row = readout_attention_row  # the name from before the readout interface

    def dla_tokens(
        self, tokens: ClassIndex, incorrect_tokens: ClassIndex | None = None, model=None
    ) -> Float[Tensor, "layer head batch pos"]:
        """DLA of each head's write to the readout, split by the token it reads: `[layer head batch pos]`.

        A head's output at the readout is exactly `sum_s row[h, s] * v[s, h] @ W_O[h]`, with `row` the
        `readout_attention_row` (ViViT: the [CLS] row; a mean readout averages its positions' rows, as it
        averages their outputs); each source token s gets its term's attribution (the readout norm's scale
        frozen). Summed over
        `pos` this is `dla_heads`. Needs `hook_v` and `hook_pattern` (or `hook_q` and `hook_k`) of
        every layer. `per_frame`/`per_location`/`to_grid` map the `pos` axis onto the video.
        """
        cfg = self._config()
        direction = self._class_direction(tokens, model)
        if incorrect_tokens is not None:
            direction = direction - self._class_direction(incorrect_tokens, model)
        direction = direction * self._w(model, "readout_norm.w")
        direction = direction - direction.mean(-1, keepdim=True)  # <x - mean(x), d> = <x, d - mean(d)>
        scale = self.readout_scale()  # [batch], frozen
        W_O = self._w(model, "W_O")
        out = []
        for l in range(cfg.n_layers):
            v = self[f"blocks.{l}.attn.hook_v"]
            row = self.readout_attention_row(l)
            if direction.ndim == 1:  # read-out of each head's value vectors along the class direction
                value_dir = einsum(W_O[l].to(v), direction.to(v), "head d_head d_model, d_model -> head d_head")
                per_src = einsum(v, value_dir, "batch pos head d_head, head d_head -> batch head pos")
            else:
                value_dir = einsum(W_O[l].to(v), direction.to(v), "head d_head d_model, batch d_model -> batch head d_head")
                per_src = einsum(v, value_dir, "batch pos head d_head, batch head d_head -> batch head pos")
            out.append(rearrange(per_src * row / scale[:, None, None], "batch head pos -> head batch pos"))
        return torch.stack(out)
