"""The building blocks of HookedViViT: embeddings, LayerNorm, attention, MLP and the pre-LN block.

Each computes exactly what transformers' ViViT computes and exposes its activations through
hook points. Optional activations (attention pattern, per-head results, per-head inputs) are
computed only while something is attached to their hook point.

    block = TransformerBlock(cfg, layer=0)
    resid_post = block(resid_pre)                      # [batch pos d_model]
    block.attn.W_Q.shape                               # [head d_model d_head]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Float
from torch import Tensor, nn

from vivit_lens.models.config import ViViTConfig
from vivit_lens.models.hooks import HookPoint

Resid = Float[Tensor, "batch pos d_model"]


def activation_fn(name: str):
    """The MLP nonlinearity named by an HF `hidden_act`.

    `gelu_fast`, `gelu_new` and `gelu_pytorch_tanh` are the same tanh approximation; HF writes
    the first two as Python ops, the fused kernel differs from them by < 3e-7 and is ~5x faster.
    """
    if name in ("gelu_fast", "gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "relu":
        return F.relu
    if name in ("silu", "swish"):
        return F.silu
    raise ValueError(f"unsupported hidden_act {name!r}")


class Embed(nn.Module):
    """Tubelet embedding (a Conv3d with kernel = stride = tubelet) with [CLS] prepended.

    Token order is time-major, then row, then column: `pos = 1 + t*(H'*W') + h*W' + w`.
    With `cls_token=False` (VideoMAE) there is no [CLS]: `pos = t*(H'*W') + h*W' + w`.
    """

    def __init__(self, cfg: ViViTConfig, cls_token: bool = True):
        super().__init__()
        self.cfg = cfg
        if cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.proj = nn.Conv3d(cfg.num_channels, cfg.d_model, kernel_size=cfg.tubelet_size, stride=cfg.tubelet_size)

    def forward(self, pixel_values: Float[Tensor, "batch frames channels height width"]) -> Resid:
        x = self.proj(rearrange(pixel_values, "batch frames channels height width -> batch channels frames height width"))
        tubelets = rearrange(x, "batch d_model t h w -> batch (t h w) d_model")
        if not hasattr(self, "cls_token"):
            return tubelets
        cls = self.cls_token.expand(tubelets.shape[0], -1, -1)
        return torch.cat([cls, tubelets], dim=1)


class PosEmbed(nn.Module):
    """Learned position embedding, one row per token (CLS first)."""

    def __init__(self, cfg: ViViTConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.zeros(cfg.n_pos, cfg.d_model))

    def forward(self, batch: int) -> Resid:
        return self.W_pos.expand(batch, -1, -1)


class LayerNorm(nn.Module):
    """LayerNorm with `hook_scale` (the divisor, `[... 1]`) and `hook_normalized` (after weight and bias).

    Without hooks this is `F.layer_norm`; with hooks it is computed step by step so that a hook
    can change (e.g. freeze) the scale.
    """

    def __init__(self, cfg: ViViTConfig, eps: float | None = None, pooled: bool = False):
        """`eps` overrides the config's; `pooled`: it normalises one vector per clip (`[batch d_model]`)."""
        super().__init__()
        self.eps = cfg.layer_norm_eps if eps is None else eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        rows = "batch" if pooled else "batch pos"
        self.hook_scale = HookPoint(f"{rows} 1")
        self.hook_normalized = HookPoint(f"{rows} d_model")

    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        if not (self.hook_scale.has_hooks or self.hook_normalized.has_hooks):
            return F.layer_norm(x, (x.shape[-1],), self.w, self.b, self.eps)
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale * self.w + self.b)


class Attention(nn.Module):
    """Multi-head self-attention over all tokens (no mask), HF ViViT's q/k/v/o projections.

    Parameters are stored fused, as HF stores them (`q_proj.weight [head*d_head d_model]`), so
    the plain forward is the same computation as HF's; `W_Q` etc. are per-head views in the
    TransformerLens layout.
    """

    def __init__(self, cfg: ViViTConfig):
        super().__init__()
        self.cfg = cfg
        n_heads, d_head, d_model = cfg.n_heads, cfg.d_head, cfg.d_model
        self.q_proj = nn.Linear(d_model, n_heads * d_head, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d_model, n_heads * d_head, bias=cfg.key_bias)  # VideoMAE: never a key bias
        self.v_proj = nn.Linear(d_model, n_heads * d_head, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(n_heads * d_head, d_model, bias=True)
        self.scale = d_head**-0.5
        self.hook_q = HookPoint("batch pos head d_head")
        self.hook_k = HookPoint("batch pos head d_head")
        self.hook_v = HookPoint("batch pos head d_head")
        self.hook_attn_scores = HookPoint("batch head query_pos key_pos")
        self.hook_pattern = HookPoint("batch head query_pos key_pos")
        self.hook_z = HookPoint("batch pos head d_head")
        self.hook_result = HookPoint("batch pos head d_model")

    # Per-head weights, TransformerLens layout (views of the fused parameters) ------------------
    def _in_weight(self, linear: nn.Linear) -> Float[Tensor, "head d_model d_head"]:
        return rearrange(linear.weight, "(head d_head) d_model -> head d_model d_head", head=self.cfg.n_heads)

    def _in_bias(self, linear: nn.Linear) -> Float[Tensor, "head d_head"]:
        if linear.bias is None:
            return linear.weight.new_zeros(self.cfg.n_heads, self.cfg.d_head)
        return rearrange(linear.bias, "(head d_head) -> head d_head", head=self.cfg.n_heads)

    @property
    def W_Q(self) -> Float[Tensor, "head d_model d_head"]:
        return self._in_weight(self.q_proj)

    @property
    def W_K(self) -> Float[Tensor, "head d_model d_head"]:
        return self._in_weight(self.k_proj)

    @property
    def W_V(self) -> Float[Tensor, "head d_model d_head"]:
        return self._in_weight(self.v_proj)

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        return rearrange(self.o_proj.weight, "d_model (head d_head) -> head d_head d_model", head=self.cfg.n_heads)

    @property
    def b_Q(self) -> Float[Tensor, "head d_head"]:
        return self._in_bias(self.q_proj)

    @property
    def b_K(self) -> Float[Tensor, "head d_head"]:
        return self._in_bias(self.k_proj)

    @property
    def b_V(self) -> Float[Tensor, "head d_head"]:
        return self._in_bias(self.v_proj)

    @property
    def b_O(self) -> Float[Tensor, "d_model"]:
        return self.o_proj.bias

    # Forward -------------------------------------------------------------------------------------
    def _project(self, x: Tensor, linear: nn.Linear) -> Float[Tensor, "batch pos head d_head"]:
        """Shared input `[batch pos d_model]`, or a per-head input `[batch pos head d_model]`."""
        if x.ndim == 3:
            return rearrange(linear(x), "batch pos (head d_head) -> batch pos head d_head", head=self.cfg.n_heads)
        out = einsum(x, self._in_weight(linear), "batch pos head d_model, head d_model d_head -> batch pos head d_head")
        return out + self._in_bias(linear)

    def _project_shared(self, x: Resid) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v from one input with a single fused matmul (faster than three on CPU, same values)."""
        linears = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([lin.weight for lin in linears])
        biases = [lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features) for lin in linears]
        bias = torch.cat(biases) if self.cfg.qkv_bias else None
        qkv = torch.nn.functional.linear(x, weight, bias)
        return rearrange(qkv, "batch pos (three head d_head) -> three batch pos head d_head", three=3,
                         head=self.cfg.n_heads).unbind(0)

    def forward(self, q_in: Tensor, k_in: Tensor, v_in: Tensor) -> Resid:
        if q_in is k_in and k_in is v_in and q_in.ndim == 3:
            q, k, v = self._project_shared(q_in)
        else:
            q, k, v = (self._project(x, lin) for x, lin in zip((q_in, k_in, v_in), (self.q_proj, self.k_proj, self.v_proj)))
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        # Head-major contiguous layout: the CPU attention kernels are markedly faster on it.
        q, k, v = (rearrange(t, "batch pos head d_head -> batch head pos d_head").contiguous() for t in (q, k, v))
        if self.hook_attn_scores.has_hooks or self.hook_pattern.has_hooks:
            scores = self.hook_attn_scores(torch.matmul(q, k.transpose(-1, -2)) * self.scale)
            pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
            z = torch.matmul(pattern, v)
        else:
            z = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.from_z(rearrange(z, "batch head pos d_head -> batch pos head d_head"))

    def from_z(self, z: Float[Tensor, "batch pos head d_head"]) -> Resid:
        """The attention output from the heads' outputs: `hook_z` onward (`hook_result` or the fused o_proj)."""
        z = self.hook_z(z)
        if self.hook_result.has_hooks:
            result = self.hook_result(
                einsum(z, self.W_O, "batch pos head d_head, head d_head d_model -> batch pos head d_model")
            )
            return result.sum(dim=2) + self.b_O
        return self.o_proj(rearrange(z, "batch pos head d_head -> batch pos (head d_head)"))


class MLP(nn.Module):
    """fc1 -> activation -> fc2, with `hook_pre` (after fc1) and `hook_post` (after the activation)."""

    def __init__(self, cfg: ViViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.fc2 = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = activation_fn(cfg.hidden_act)
        self.hook_pre = HookPoint("batch pos d_mlp")
        self.hook_post = HookPoint("batch pos d_mlp")

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return self.fc1.weight.T

    @property
    def b_in(self) -> Float[Tensor, "d_mlp"]:
        return self.fc1.bias

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        return self.fc2.weight.T

    @property
    def b_out(self) -> Float[Tensor, "d_model"]:
        return self.fc2.bias

    def forward(self, x: Resid) -> Resid:
        return self.fc2(self.hook_post(self.act(self.hook_pre(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """Pre-LN block: `resid_mid = resid_pre + attn(ln1(resid_pre))`, `resid_post = resid_mid + mlp(ln2(resid_mid))`.

    `hook_q_input`/`hook_k_input`/`hook_v_input` `[batch pos head d_model]` give each head its own
    copy of the residual stream going into ln1 (for path patching); `hook_mlp_in` is the residual
    going into ln2. While one of the split hooks is attached, that input is normalised on its own
    and ln1's hooks see only the shared stream, which still feeds the unsplit inputs.
    """

    def __init__(self, cfg: ViViTConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        # Registered in the order the forward pass reaches them, so that hook_names reads as the computation.
        self.hook_resid_pre = HookPoint("batch pos d_model")
        self.ln1 = LayerNorm(cfg)
        self.hook_q_input = HookPoint("batch pos head d_model")
        self.hook_k_input = HookPoint("batch pos head d_model")
        self.hook_v_input = HookPoint("batch pos head d_model")
        self.attn = Attention(cfg)
        self.hook_attn_out = HookPoint("batch pos d_model")
        self.hook_resid_mid = HookPoint("batch pos d_model")
        self.hook_mlp_in = HookPoint("batch pos d_model")
        self.ln2 = LayerNorm(cfg)
        self.mlp = MLP(cfg)
        self.hook_mlp_out = HookPoint("batch pos d_model")
        self.hook_resid_post = HookPoint("batch pos d_model")

    def _split_input(self, resid: Resid, hook: HookPoint, shared: Tensor | None) -> Tensor:
        if not hook.has_hooks:
            return shared
        per_head = hook(resid.unsqueeze(2).expand(-1, -1, self.cfg.n_heads, -1).clone())
        return F.layer_norm(per_head, (self.cfg.d_model,), self.ln1.w, self.ln1.b, self.ln1.eps)

    def forward(self, resid_pre: Resid) -> Resid:
        resid_pre = self.hook_resid_pre(resid_pre)
        split = (self.hook_q_input, self.hook_k_input, self.hook_v_input)
        ln1_hooked = self.ln1.hook_scale.has_hooks or self.ln1.hook_normalized.has_hooks
        shared = self.ln1(resid_pre) if ln1_hooked or not all(h.has_hooks for h in split) else None
        q_in, k_in, v_in = (self._split_input(resid_pre, h, shared) for h in split)
        return self.finish(resid_pre, self.attn(q_in, k_in, v_in))

    def finish(self, resid_pre: Resid, attn_out: Resid) -> Resid:
        """The block after its attention: `hook_attn_out` onward (a patching run resumes here)."""
        attn_out = self.hook_attn_out(attn_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone() if self.hook_mlp_in.has_hooks else resid_mid)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out)

    def at_positions(self, resid_pre: Resid, positions: Sequence[int]) -> dict[str, Tensor]:
        """The block for queries at `positions` only, keys and values from every position: all that a
        reader of those positions' output depends on (the logits read [CLS] of the last block).

        Returns the activations under the block's hook names (`attn.hook_q` ... `hook_resid_post`),
        `[batch len(positions) ...]`, except `attn.hook_k`/`attn.hook_v` (every position). The block's
        own hook points do not fire: callers use it only where no hook is attached to this block.
        `hook_mlp_in` is a copy of `resid_mid`, so that its gradient is the MLP path's alone.
        """
        attn, n_heads = self.attn, self.cfg.n_heads
        idx = torch.as_tensor(positions, device=resid_pre.device)
        x = self.ln1(resid_pre)
        split = "batch pos (head d_head) -> batch pos head d_head"
        q = rearrange(attn.q_proj(x[:, idx]), split, head=n_heads)
        k, v = (rearrange(lin(x), split, head=n_heads) for lin in (attn.k_proj, attn.v_proj))
        heads_first = "batch pos head d_head -> batch head pos d_head"
        z = F.scaled_dot_product_attention(*(rearrange(t, heads_first).contiguous() for t in (q, k, v)),
                                           scale=attn.scale)  # fmt: skip
        z = rearrange(z, "batch head pos d_head -> batch pos head d_head")
        attn_out = attn.o_proj(rearrange(z, "batch pos head d_head -> batch pos (head d_head)"))
        resid_mid = resid_pre[:, idx] + attn_out
        mlp_in = resid_mid.clone()
        mlp_out = self.mlp.fc2(self.mlp.act(self.mlp.fc1(self.ln2(mlp_in))))
        return {"attn.hook_q": q, "attn.hook_k": k, "attn.hook_v": v, "attn.hook_z": z, "hook_attn_out": attn_out,
                "hook_mlp_in": mlp_in, "hook_mlp_out": mlp_out, "hook_resid_post": resid_mid + mlp_out}  # fmt: skip
