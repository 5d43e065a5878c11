"""Attribution patching: the first-order (gradient) estimate of every patching effect, from one backward pass.

Patching an activation from its reference value `a_ref` to its source value `a_src` changes the
metric by about `(a_src - a_ref) . dM/da`, the gradient taken in the reference run. One forward of
the source run (cache), one forward of the reference run (cache) and one backward give this for
every head (x position), q/k/v, attn_out, mlp_out and resid_pre at once, and, with the gradients at
the receivers' inputs, for every sender -> receiver edge of path patching. Results are effects with
the conventions and shapes of the exact functions (`vivit_lens.paths`), so the two compare element
by element; `agreement` scores how well they match.

    attr = attribution_patch(model, clean, corrupt, Logit(31))      # 2 forwards + 1 backward
    attr.head_out                                                   # [layer head]
    attr.senders_into(FinalResid()).heads()                         # [layer head], as PathPatcher
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor

from vivit_lens.interp import memory
from vivit_lens.interp.metrics import Metric, metric_kind
from vivit_lens.interp.paths import (
    HeadInput, MLPInput, PathScores, Sender, _mask, all_receivers, all_senders, check_nodes, node_positions, reaches,
    source_hook, write_delta,
)  # fmt: skip

Direction = str  # "denoising" or "noising"


def _layer_norm_backward(
    x: Float[Tensor, "batch pos d_model"], grad_out: Float[Tensor, "*batch d_model"], w: Float[Tensor, "d_model"],
    eps: float,
) -> Float[Tensor, "*batch d_model"]:  # fmt: skip
    """Gradient w.r.t. the input of `LayerNorm(x) * w + b`, given the gradient of its output (per head ok)."""
    xc = x - x.mean(-1, keepdim=True)
    sigma = (xc.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    xhat = xc / sigma
    if grad_out.ndim == 4:  # [batch pos head d_model]: one gradient per head, one shared input
        xhat, sigma = xhat.unsqueeze(2), sigma.unsqueeze(2)
    g = grad_out * w
    return (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True)) / sigma


class Attribution:
    """Per-hook attributions, and what edges need: source - reference differences of the senders' writes, metric
    gradients at the receivers' inputs, and the reference residual before each block (for its LayerNorm).

    Every value is an estimated *effect* (metric change, batch mean), as in `vivit_lens.paths`. For
    TransformerLens-style patched-metric values (what `vivit_lens.patching` returns), add
    `ref_metric.mean()`, the reference run's metric. `per_example`: the metric gave one value per
    clip (a `Metric`: effects are averaged over the batch), else one value for the whole batch (a
    TransformerLens-style callable: its gradient already carries the batch, effects are summed).
    """

    def __init__(self, model, nodes: dict[str, Tensor], deltas: dict[str, Tensor], grads: dict[str, Tensor],
                 ref_resid: dict[str, Tensor], direction: str, metric: str, ref_metric: Tensor,
                 per_example: bool = True):  # fmt: skip
        self.model, self.cfg = model, model.cfg
        self.nodes, self.deltas, self.grads, self.ref_resid = nodes, deltas, grads, ref_resid
        self.direction, self.metric, self.ref_metric = direction, metric, ref_metric
        self.per_example = per_example

    def _over_batch(self, t: Tensor, dim: int) -> Tensor:
        return t.mean(dim) if self.per_example else t.sum(dim)

    # Nodes ----------------------------------------------------------------------------------------
    def node(self, hook: str) -> Tensor:
        """`(a_src - a_ref) . dM/da` at one hook, summed over its last axis, averaged over the batch.

        `[pos]` for a residual hook, `[pos head]` for `hook_z`/`hook_q`..., etc.
        """
        if hook not in self.nodes:
            raise KeyError(f"{hook!r} was not attributed; pass it in attribution_patch(..., hooks=[...])")
        return self._over_batch(self.nodes[hook], 0)

    def _stack(self, name: str) -> Tensor:
        return torch.stack([self.node(f"blocks.{layer}.{name}") for layer in range(self.cfg.n_layers)])

    @property
    def head_out_by_pos(self) -> Float[Tensor, "layer pos head"]:
        """Patching one head's output (`hook_z`) at one position."""
        return self._stack("attn.hook_z")

    @property
    def head_out(self) -> Float[Tensor, "layer head"]:
        """Patching one head's output at every position."""
        return self.head_out_by_pos.sum(1)

    def _qkv(self, kind: str, by_pos: bool) -> Tensor:
        out = self._stack(f"attn.hook_{kind}")
        return out if by_pos else out.sum(1)

    @property
    def q(self) -> Float[Tensor, "layer head"]:
        return self._qkv("q", False)

    @property
    def k(self) -> Float[Tensor, "layer head"]:
        return self._qkv("k", False)

    @property
    def v(self) -> Float[Tensor, "layer head"]:
        return self._qkv("v", False)

    @property
    def q_by_pos(self) -> Float[Tensor, "layer pos head"]:
        return self._qkv("q", True)

    @property
    def k_by_pos(self) -> Float[Tensor, "layer pos head"]:
        return self._qkv("k", True)

    @property
    def v_by_pos(self) -> Float[Tensor, "layer pos head"]:
        return self._qkv("v", True)

    @property
    def resid_pre(self) -> Float[Tensor, "layer pos"]:
        return self._stack("hook_resid_pre")

    @property
    def attn_out(self) -> Float[Tensor, "layer pos"]:
        return self._stack("hook_attn_out")

    @property
    def mlp_out(self) -> Float[Tensor, "layer pos"]:
        return self._stack("hook_mlp_out")

    # Edges ----------------------------------------------------------------------------------------
    def receiver_grads(self, receivers: Sequence) -> Float[Tensor, "receiver batch pos d_model"]:
        """dM/d(receiver input), zero outside the receiver's positions.

        A head's q/k/v input gradient is the gradient through that head's projection and ln1 only,
        computed in closed form from `hook_q` (etc.) gradients: what backward hooks on
        `hook_q_input` would give, without materialising per-head copies of the residual.
        """
        with torch.no_grad():
            return self._receiver_grads(receivers)

    def _receiver_grads(self, receivers: Sequence) -> Float[Tensor, "receiver batch pos d_model"]:
        L = self.cfg.n_layers
        out, cache = [], {}
        for r in receivers:
            if isinstance(r, HeadInput):
                key = (r.layer, r.kind)
                if key not in cache:
                    block = self.model.blocks[r.layer]
                    w = getattr(block.attn, f"W_{r.kind.upper()}")  # [head d_model d_head]
                    g = self.grads[f"blocks.{r.layer}.attn.hook_{r.kind}"]
                    g_ln = einsum(g, w, "batch pos head d_head, head d_model d_head -> batch pos head d_model")
                    x = self.ref_resid[f"blocks.{r.layer}.hook_resid_pre"]
                    cache = {key: _layer_norm_backward(x, g_ln, block.ln1.w, block.ln1.eps)}
                g = cache[key][:, :, r.head]
            elif isinstance(r, MLPInput):
                g = self.grads[f"blocks.{r.layer}.hook_mlp_in"]
            else:
                g = self.grads[source_hook(r, L)]
            out.append(_mask(g, node_positions(r, self.cfg)))
        return torch.stack(out)

    def _pairs(self, senders: list, receivers: list) -> Float[Tensor, "sender receiver"]:
        """Edge attribution of every (sender, receiver) pair; zero where the sender cannot reach."""
        with torch.no_grad():
            return self._pairs_no_grad(senders, receivers)

    def _pairs_no_grad(self, senders: list, receivers: list) -> Float[Tensor, "sender receiver"]:
        deltas = torch.stack([write_delta(self.model, self.deltas, None, s, None) for s in senders])
        out = deltas.new_zeros(len(senders), len(receivers))
        groups: dict[tuple, list[int]] = defaultdict(list)
        for j, r in enumerate(receivers):  # one closed-form gradient per (layer, q|k|v) serves all its heads
            key = (r.layer, r.kind) if isinstance(r, HeadInput) else (type(r).__name__, getattr(r, "layer", -1))
            groups[key].append(j)
        for idx in groups.values():
            grads = self.receiver_grads([receivers[j] for j in idx])
            out[:, idx] = self._over_batch(einsum(deltas, grads, "s batch pos d, r batch pos d -> s r batch"), -1)
        reach = torch.tensor([[reaches(s, r) for r in receivers] for s in senders], dtype=out.dtype, device=out.device)
        return out * reach

    def _scores(self, values: Tensor, senders, receivers) -> PathScores:
        return PathScores(values, tuple(senders), tuple(tuple(g) for g in receivers), self.cfg.n_layers,
                          self.cfg.n_heads, "attribution", self.direction, self.metric)  # fmt: skip

    def _nodes(self, nodes, role: str, expand) -> list:
        if isinstance(nodes, str):
            return expand(self.cfg, nodes)
        out = list(nodes) if isinstance(nodes, (list, tuple)) else [nodes]
        check_nodes(self.cfg, out, role)
        return out

    def patch(self, senders, receivers) -> Tensor:
        """First-order estimate of `PathPatcher.patch(senders, receivers)`: the sum over reachable pairs."""
        S = self._nodes(senders, "sender", all_senders)
        R = self._nodes(receivers, "receiver", all_receivers)
        return self._pairs(S, R).sum()

    def senders_into(self, receivers, senders="all") -> PathScores:
        """Estimate of `PathPatcher.senders_into`: each sender through one receiver group (summed)."""
        S = self._nodes(senders, "sender", all_senders)
        R = self._nodes(receivers, "receiver", all_receivers)
        return self._scores(self._pairs(S, R).sum(1, keepdim=True), S, [R])

    def receivers_of(self, sender: Sender, receivers="all") -> PathScores:
        """Estimate of `PathPatcher.receivers_of`: one sender through each receiver alone."""
        S = self._nodes(sender, "sender", all_senders)
        R = self._nodes(receivers, "receiver", all_receivers)
        return self._scores(self._pairs(S[:1], R), S[:1], [(r,) for r in R])

    def matrix(self, senders="all", receivers="all") -> PathScores:
        """Estimate of `PathPatcher.matrix`: every sender through every receiver alone (edge scores)."""
        S = self._nodes(senders, "sender", all_senders)
        R = self._nodes(receivers, "receiver", all_receivers)
        return self._scores(self._pairs(S, R), S, [(r,) for r in R])


_PER_LAYER = ("hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "hook_attn_out",
              "hook_mlp_in", "hook_mlp_out")  # fmt: skip


_READOUT_ONLY = ("attn.hook_q", "attn.hook_z", "hook_attn_out", "hook_mlp_in", "hook_mlp_out", "hook_resid_post")


def _last_block_at_readout(model, resid_pre: Float[Tensor, "batch pos d_model"]) -> dict[str, Tensor]:
    """The last block for the readout positions' queries only, under full hook names: all that the logits
    depend on."""
    name = f"blocks.{model.cfg.n_layers - 1}."
    return {name + k: v for k, v in model.blocks[-1].at_positions(resid_pre, model.readout_positions).items()}


def _pad(t: Tensor, positions: tuple[int, ...], n_pos: int) -> Tensor:
    """An activation at the readout positions only `[batch k ...]` (positions on axis 1) as `[batch pos ...]`,
    zero elsewhere (where the logits do not read it: its gradient is zero). Only for what
    `_last_block_at_readout` computed: other hooks keep their shape."""
    if t.shape[1] == n_pos:
        return t
    out = t.new_zeros(t.shape[0], n_pos, *t.shape[2:])
    out[:, list(positions)] = t
    return out


def attribution_patch(
    model,
    clean: Float[Tensor, "batch frames channels height width"],
    corrupt: Float[Tensor, "batch frames channels height width"],
    metric: Metric | Callable,
    *,
    direction: Direction = "denoising",
    hooks: Sequence[str] = (),
    fast: bool = True,
) -> Attribution:
    """Two forwards (source cached, reference cached with a graph) and one backward of the metric.

    `direction="denoising"`: reference = corrupt, source = clean (estimates patching clean values
    into the corrupt run); `"noising"`: the other way. `hooks`: extra hook names to attribute
    (e.g. `"ln_final.hook_normalized"`, `"blocks.1.attn.hook_pattern"`), read with `.node(name)`.
    `metric`: a `Metric` (one value per clip; effects are batch means) or a TransformerLens-style
    callable on the `[batch n_classes]` logits returning one number for the batch.
    `fast`: when the metric reads the logits, no extra hooks are asked for and no hook is attached to
    the model, both runs compute the last block for the readout positions' queries only (the logits read
    nothing else; ViViT: [CLS]): the last layer's activations are then zero outside them, where their
    gradient is zero, so every attribution is unchanged.
    """
    if direction not in ("denoising", "noising"):
        raise ValueError(f"direction must be 'denoising' or 'noising', got {direction!r}")
    if not isinstance(clean, Tensor) or not isinstance(corrupt, Tensor) or clean.shape != corrupt.shape:
        raise ValueError("clean and corrupt must be tensors of one shape")
    L, n_pos = model.cfg.n_layers, model.cfg.n_pos
    reads, per_example = metric_kind(metric)
    names = ["hook_embed", "hook_pos_embed", f"blocks.{L - 1}.hook_resid_post", *hooks]
    names += [f"blocks.{layer}.{n}" for layer in range(L) for n in _PER_LAYER]
    names = list(dict.fromkeys(names))
    for name in names + ([reads] if reads else []):
        model._hook_point(name)
    memory.guard_attribution(model, clean, names)
    fast = fast and reads is None and not hooks and not any(h.has_hooks for h in model.hook_dict.values())
    ref_x, src_x = (corrupt, clean) if direction == "denoising" else (clean, corrupt)
    stop = L - 1 if fast else None

    with torch.no_grad():
        out, src_cache = model.run_with_cache(src_x, names_filter=names, stop_at_layer=stop)
        src = dict(src_cache)
        del src_cache  # `src` is now the only holder: its tensors become the differences, nothing else keeps them
        if fast:
            src[f"blocks.{L - 1}.hook_resid_pre"] = out
            src.update(_last_block_at_readout(model, out))
        del out
    state = _Deltas(src, grad_names={n for n in names if n not in ("hook_embed", "hook_pos_embed")},
                    keep_grads=_receiver_grad_names(L), keep_deltas=_sender_names(L))  # fmt: skip
    leaf: dict[str, Tensor] = {}
    read: dict[str, Tensor] = {}

    def start_graph(t: Tensor, hook) -> Tensor:  # the graph starts at the embedding: no parameter gradients
        leaf["embed"] = t.detach().requires_grad_(True)
        return leaf["embed"]

    def track(t: Tensor, hook) -> None:
        if hook.name == reads:
            read["t"] = t
        if hook.name in src:
            state.track(hook.name, t)

    capture = list(dict.fromkeys(names + ([reads] if reads else [])))
    with torch.enable_grad(), model.hooks([("hook_embed", start_graph)] + [(n, track) for n in capture]):
        out = model(ref_x, stop_at_layer=stop)
        if fast:
            state.track(f"blocks.{L - 1}.hook_resid_pre", out)
            last = _last_block_at_readout(model, out)
            for name, t in last.items():
                state.track(name, t)
            final = _pad(last[f"blocks.{L - 1}.hook_resid_post"], model.readout_positions, n_pos)
            out = model.unembed(model.readout(final))
        value = torch.as_tensor(metric(out if reads is None else read["t"]))
        if not per_example and value.numel() != 1:
            raise ValueError(f"a plain metric must return one number for the batch, got shape {tuple(value.shape)}")
        torch.autograd.grad(value.sum(), [leaf["embed"]])  # the per-hook work happens in the gradient hooks
    readout_only = {f"blocks.{L - 1}.{k}" for k in _READOUT_ONLY} if fast else set()
    positions = model.readout_positions
    nodes, deltas, grads = state.results(lambda name, t: _pad(t, positions, n_pos) if name in readout_only else t)
    name = repr(metric) if per_example else getattr(metric, "__name__", repr(metric))
    return Attribution(model, nodes, deltas, grads, state.ref_resid, direction, name, value.detach(), per_example)


def _receiver_grad_names(n_layers: int) -> set[str]:
    """The hooks whose gradients edge attribution reads: q/k/v (head inputs), mlp_in, the final residual."""
    names = {f"blocks.{l}.{h}" for l in range(n_layers) for h in ("attn.hook_q", "attn.hook_k", "attn.hook_v",
                                                                    "hook_mlp_in")}  # fmt: skip
    return names | {f"blocks.{n_layers - 1}.hook_resid_post"}


def _sender_names(n_layers: int) -> set[str]:
    """The hooks whose source - reference differences edge attribution reads: what senders write."""
    names = {f"blocks.{l}.{h}" for l in range(n_layers) for h in ("attn.hook_z", "hook_mlp_out")}
    return names | {"hook_embed", "hook_pos_embed"}


class _Deltas:
    """Turns the source run's cached activations into source - reference differences as the reference run
    passes each hook, and each metric gradient into that hook's attribution as soon as backward reaches it.

    Kept afterwards: the attributions (`[batch pos ...]`, summed over the last axis), the differences that
    senders write and the gradients that receivers read; the rest is freed during the backward pass. The
    reference run's own activations are kept only before each block (`hook_resid_pre`, for ln1's backward).
    """

    def __init__(self, src: dict[str, Tensor], grad_names: set[str], keep_grads: set[str], keep_deltas: set[str]):
        self.deltas, self.grad_names = src, grad_names
        self.keep_grads, self.keep_deltas = keep_grads, keep_deltas
        self.nodes: dict[str, Tensor] = {}
        self.grads: dict[str, Tensor] = {}
        self.ref_resid: dict[str, Tensor] = {}

    def track(self, name: str, t: Tensor) -> None:
        with torch.no_grad():
            self.deltas[name] = self.deltas[name] - t.detach()  # a new tensor: the cached one may be shared
        if name.endswith("hook_resid_pre"):
            self.ref_resid[name] = t.detach()
        if name in self.grad_names and t.requires_grad:
            t.register_hook(lambda g, name=name: self._on_grad(name, g))

    def _on_grad(self, name: str, g: Tensor) -> None:
        with torch.no_grad():
            self.nodes[name] = (self.deltas[name] * g).sum(-1)
            if name in self.keep_grads:
                self.grads[name] = g.detach()
        if name not in self.keep_deltas:
            del self.deltas[name]

    def results(self, full) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """Attributions, kept differences and kept gradients; a hook that backward never reached (the metric
        does not depend on it) has zero gradient. `full(name, t)`: each as `[batch pos ...]`."""
        for name in self.grad_names - self.nodes.keys():
            d = self.deltas[name]
            self.nodes[name] = torch.zeros_like(d.sum(-1))
            if name in self.keep_grads:
                self.grads[name] = torch.zeros_like(d)
        deltas = {n: full(n, d) for n, d in self.deltas.items() if n in self.keep_deltas}
        return ({n: full(n, t) for n, t in self.nodes.items()}, deltas,
                {n: full(n, t) for n, t in self.grads.items()})  # fmt: skip


# Agreement -----------------------------------------------------------------------------------
def _ranks(x: Tensor) -> Tensor:
    """Ranks from 0, ties sharing their average rank (what Spearman's correlation uses)."""
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype, device=x.device)
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=x.dtype, device=x.device).index_add_(0, inverse, ranks)
    return (sums / counts)[inverse]


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = (a.norm() * b.norm()).item()
    return float("nan") if denom == 0 else float((a * b).sum() / denom)


def _top(x: Tensor, k: int) -> set[int]:
    """The k largest |x|; ties go to the lower index (a stable sort), so the set never depends on the kernel."""
    return set(torch.argsort(x.abs(), descending=True, stable=True)[:k].tolist())


def _reachable(scores: PathScores) -> Tensor:
    """`[sender receiver]`: whether any receiver of the group can be reached by the sender at all."""
    return torch.tensor([[any(reaches(s, r) for r in group) for group in scores.receivers] for s in scores.senders])


def agreement(exact, approx, k: int = 10, mask: Tensor | None = None) -> dict[str, float]:
    """How well an approximation (attribution) matches exact scores, element by element.

    `exact`, `approx`: tensors of one shape or `PathScores`. Returns Pearson and Spearman
    correlation, `topk_overlap` (the fraction of the `k` largest-|score| elements of `exact` that
    are also among the `k` largest of `approx`; ties go to the earlier element, so the result is
    deterministic), `k`, `n` (elements compared) and `topk_trivial`: True when `k >= n`, where the
    overlap is 1 by construction and says nothing.

    Pairs that cannot interact (a sender that writes after its receiver reads: a structural zero in
    both) are left out, since they would agree trivially and inflate the correlations: derived from
    `PathScores`, or given as a boolean `mask` (True = compare) for plain tensors. NaNs are left out.
    """
    a = (exact.values if isinstance(exact, PathScores) else exact).detach().double().flatten().cpu()
    b = (approx.values if isinstance(approx, PathScores) else approx).detach().double().flatten().cpu()
    if a.shape != b.shape:
        raise ValueError(f"exact and approx must have the same number of elements, got {a.numel()} and {b.numel()}")
    keep = ~(a.isnan() | b.isnan())
    for scores in (exact, approx):
        if isinstance(scores, PathScores):
            keep &= _reachable(scores).flatten()
    if mask is not None:
        keep &= mask.flatten().cpu().bool()
    a, b = a[keep], b[keep]
    n = len(a)
    k = min(k, n)
    return {
        "pearson": _pearson(a, b),
        "spearman": _pearson(_ranks(a), _ranks(b)),
        "topk_overlap": len(_top(a, k) & _top(b, k)) / k if k else float("nan"),
        "k": k,
        "n": n,
        "topk_trivial": k >= n,
    }


__all__ = ["Attribution", "agreement", "attribution_patch"]
