"""HookedViViT: the ViViT video classifier with a hook point on every activation.

    model = HookedViViT.from_pretrained("google/vivit-b-16x2-kinetics400")   # or a local folder
    logits, cache = model.run_with_cache(pixel_values)    # pixel_values [batch frames channels height width]
    cache["blocks.5.attn.hook_z"]                          # [batch pos head d_head]
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from vivit_lens.models.components import Embed, LayerNorm, PosEmbed, Resid, TransformerBlock
from vivit_lens.models.config import ConfigError, ProcessorConfig, ViViTConfig
from vivit_lens.models.hooks import HookedRootModule, HookPoint

RETURN_TYPES = ("logits", "resid")


class InputError(ValueError):
    """Input that the model cannot take; says what was expected and what came."""


class Unembed(nn.Module):
    """The classifier on the [CLS] token: `logits = resid[:, 0] @ W_U + b_U`."""

    def __init__(self, cfg: ViViTConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.zeros(cfg.d_model, cfg.n_classes))
        self.b_U = nn.Parameter(torch.zeros(cfg.n_classes))

    def forward(self, cls_resid: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch n_classes"]:
        return torch.nn.functional.linear(cls_resid, self.W_U.T, self.b_U)


class HookedViViT(HookedRootModule):
    """ViViT (joint space-time attention) with TransformerLens hook names.

    Computes what transformers' `VivitForVideoClassification` computes (logits within 1e-5).
    Hook names: `hook_embed`, `hook_pos_embed`, `blocks.{l}.hook_resid_pre`, `blocks.{l}.ln1.hook_scale`,
    `blocks.{l}.attn.hook_{q,k,v,attn_scores,pattern,z,result}`, `blocks.{l}.hook_{q,k,v}_input`,
    `blocks.{l}.hook_attn_out`, `blocks.{l}.hook_resid_mid`, `blocks.{l}.hook_mlp_in`,
    `blocks.{l}.mlp.hook_{pre,post}`, `blocks.{l}.hook_mlp_out`, `blocks.{l}.hook_resid_post`,
    `ln_final.hook_{scale,normalized}`; `model.hook_names` lists them in order.

    Readout (the interface every architecture implements, so analysis need not know which it has):
    `logits = model.unembed(model.readout(resid))` for the final residual `resid` `[batch pos d_model]`;
    `readout_positions` are the positions the readout reads (here [CLS], `(0,)`), `readout_norm_name`
    the LayerNorm it applies (its `hook_scale` freezes it), `readout_hook_name` the hook holding the
    classifier's input (here `ln_final.hook_normalized`, read at `readout_positions`).
    """

    def __init__(self, cfg: ViViTConfig, processor: ProcessorConfig | None = None):
        self._check_size(cfg)
        super().__init__()
        self.cfg = cfg
        self.processor = processor or ProcessorConfig(crop_size=cfg.image_size)
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint("batch pos d_model")
        self.pos_embed = PosEmbed(cfg)
        self.hook_pos_embed = HookPoint("batch pos d_model")
        self.blocks = nn.ModuleList([TransformerBlock(cfg, layer) for layer in range(cfg.n_layers)])
        self.ln_final = LayerNorm(cfg)
        self.unembed = Unembed(cfg)
        self.setup_hooks()
        self.eval()

    @staticmethod
    def _check_size(cfg: ViViTConfig) -> None:
        """Refuse, before allocating, a model whose parameters do not fit in memory."""
        from vivit_lens.interp import memory

        where = torch.empty(0)  # the default device and dtype the parameters are built with
        memory.check(cfg.n_parameters * where.element_size(), f"a model of {cfg.n_parameters:.3g} parameters",
                     where.device, "check the config's sizes, or build it on another device")  # fmt: skip

    # Readout -------------------------------------------------------------------------------------
    def readout(self, resid: Resid) -> Float[Tensor, "batch d_model"]:
        """The vector the classifier reads from the final residual: [CLS] after the final LayerNorm."""
        return self.ln_final(resid)[:, 0]

    @property
    def readout_positions(self) -> tuple[int, ...]:
        """Positions of the final residual the readout reads (and averages): [CLS]. From the config, so that a
        cache without its model knows them too."""
        return self.cfg.readout_positions

    @property
    def readout_hook_name(self) -> str:
        """The hook holding the classifier's input (at `readout_positions` when it has a `pos` axis)."""
        return "ln_final.hook_normalized"

    @property
    def readout_norm_name(self) -> str:
        """The LayerNorm the readout applies (to the mean of the residual over `readout_positions`)."""
        return self.cfg.readout_norm_name

    @property
    def readout_norm(self) -> LayerNorm:
        return self.get_submodule(self.readout_norm_name)

    # Forward -------------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,  # checked by hand below, for messages that name what was expected
        *,
        start_at_layer: int | numbers.Integral | None = None,
        stop_at_layer: int | numbers.Integral | None = None,
        return_type: str = "logits",  # "logits" or "resid", checked below
    ) -> Float[Tensor, "batch n_classes"] | Resid:
        """Logits `[batch n_classes]` for pixel values `[batch frames channels height width]`.

        `start_at_layer=l`: `x` is the residual stream at `blocks.{l}.hook_resid_pre`
        `[batch pos d_model]` (from a cache), and the run resumes there. `stop_at_layer=l`: return
        the residual at `blocks.{l}.hook_resid_pre` instead of logits (`l = n_layers`: before
        ln_final). `return_type="resid"`: return the final residual before ln_final.
        """
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")
        n = self.cfg.n_layers
        start = self._layer_arg(start_at_layer, 0, "start_at_layer")
        stop = self._layer_arg(stop_at_layer, n, "stop_at_layer")
        if start > stop:
            raise ValueError(f"start_at_layer ({start}) is after stop_at_layer ({stop})")
        if start_at_layer is None:
            self._check_pixels(x)
            pixels = x.to(device=self.unembed.W_U.device, dtype=self.unembed.W_U.dtype)  # as TL moves its tokens
            resid = self.hook_embed(self.embed(pixels)) + self.hook_pos_embed(self.pos_embed(x.shape[0]))
        else:
            self._check_resid(x)
            resid = x
        for block in self.blocks[start:stop]:
            resid = block(resid)
        if stop_at_layer is not None or return_type == "resid":
            return resid
        return self.unembed(self.readout(resid))

    def _layer_arg(self, value: Any, default: int, name: str) -> int:
        if value is None:
            return default
        n = self.cfg.n_layers
        # numpy and other integer types are layers; a bool is not (True would silently mean layer 1)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not -n <= value <= n:
            raise ValueError(f"{name} must be an int in [-{n}, {n}], got {value!r}")
        value = int(value)
        return value % n if value < 0 else value

    def _check_pixels(self, x: Tensor) -> None:
        cfg = self.cfg
        expected = (cfg.num_frames, cfg.num_channels, *cfg.image_size)
        axes = ("frames", "channels", "height", "width")
        want = ", ".join(f"{a}={e}" for a, e in zip(axes, expected))
        if not isinstance(x, Tensor):
            raise InputError(f"pixel_values must be a torch.Tensor [batch, {want}], got {type(x).__name__}")
        if x.ndim != 5:
            hint = " (add a batch axis with x.unsqueeze(0))" if x.ndim == 4 else ""
            raise InputError(f"pixel_values must have 5 axes [batch, {want}], got shape {tuple(x.shape)}{hint}")
        wrong = [f"{a} {g} != {e}" for a, g, e in zip(axes, x.shape[1:], expected) if g != e]
        if wrong:
            raise InputError(
                f"pixel_values must be [batch, {want}], got shape {tuple(x.shape)} ({'; '.join(wrong)})"
            )
        if not x.is_floating_point():
            raise InputError(
                f"pixel_values must be a float tensor of preprocessed pixels, got {x.dtype}; "
                "use vivit_lens.video.preprocess on uint8 frames"
            )
        # A finite sum means every value is finite (any NaN or infinity makes the sum NaN or infinite), so the exact
        # search, four times the cost, runs only when it is not (a sum may also overflow; the search then finds none).
        if x.device.type == "meta":  # meta tensors hold no values to check
            return
        if torch.isfinite(x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)):
            return
        bad = ~torch.isfinite(x)
        if bad.any():
            b, f, c, r, col = (int(i) for i in bad.nonzero()[0])
            frames = sorted({int(i) for i in bad.any(dim=(2, 3, 4)).nonzero()[:, 1]})
            shown = ", ".join(map(str, frames[:10])) + (" ..." if len(frames) > 10 else "")
            raise InputError(
                f"pixel_values hold {int(bad.sum())} NaN or infinite value(s), first at clip {b}, frame {f}, "
                f"channel {c} (row {r}, column {col}); frames affected: {shown}"
            )

    def _check_resid(self, x: Tensor) -> None:
        want = (self.cfg.n_pos, self.cfg.d_model)
        if not isinstance(x, Tensor) or x.ndim != 3 or tuple(x.shape[1:]) != want:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(
                f"with start_at_layer, the input must be a residual stream [batch, pos={want[0]}, "
                f"d_model={want[1]}], got {got}"
            )
        dtype, device = self.unembed.W_U.dtype, self.unembed.W_U.device
        if x.dtype != dtype or x.device != device:
            raise InputError(
                f"with start_at_layer, the residual must be {dtype} on {device} like the model, got {x.dtype} on "
                f"{x.device}; convert it with .to(model.W_U)"
            )

    # Running with hooks and caches (checked arguments around hooks.HookedRootModule) ---------------
    def add_hook(self, name, fn, dir="fwd"):
        """Attach `fn` to the hook `name` (or to every hook `name(n)` accepts); a forward hook that returns a
        tensor of another dtype or device than the activation it replaces is an error naming the hook."""
        if not callable(fn):
            raise TypeError(f"a hook function must be callable fn(activation, hook), got {type(fn).__name__}")
        return super().add_hook(name, _checked_return(fn) if dir == "fwd" else fn, dir)

    @contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=()) -> Iterator[HookedViViT]:
        _check_hook_list(fwd_hooks, "fwd_hooks")
        _check_hook_list(bwd_hooks, "bwd_hooks")
        with super().hooks(fwd_hooks, bwd_hooks) as model:
            yield model

    def run_with_hooks(self, *args: Any, fwd_hooks=(), bwd_hooks=(), **kwargs: Any) -> Any:
        _check_hook_list(fwd_hooks, "fwd_hooks")
        _check_hook_list(bwd_hooks, "bwd_hooks")
        return super().run_with_hooks(*args, fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks, **kwargs)

    def run_with_cache(
        self,
        *args: Any,
        names_filter=None,
        device: str | torch.device | None = None,
        incl_bwd: bool = False,
        check_memory: bool = True,
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        """`HookedRootModule.run_with_cache`, refused before compute when the cache would not fit in memory.

        `check_memory=False` (or the environment variable VIVIT_LENS_NO_MEMORY_GUARD=1) skips the guard.
        `incl_bwd=True` computes the gradients of the cached activations only: no parameter keeps a `.grad`.
        """
        from vivit_lens.interp import memory

        _check_names_filter(names_filter)
        if incl_bwd and torch.is_inference_mode_enabled():
            raise RuntimeError("run_with_cache(incl_bwd=True) needs autograd, which torch.inference_mode() turns "
                               "off; call it outside the inference_mode block")  # fmt: skip
        x = args[0] if args else kwargs.get("x")
        if check_memory and isinstance(x, Tensor) and x.ndim:
            memory.guard_cache(self, self._names_matching(names_filter), x.shape[0], device=device, incl_bwd=incl_bwd,
                               start_at_layer=kwargs.get("start_at_layer"), stop_at_layer=kwargs.get("stop_at_layer"))  # fmt: skip
        if not incl_bwd:
            return super().run_with_cache(*args, names_filter=names_filter, device=device, **kwargs)
        grads = [(p, p.grad) for p in self.parameters()]
        for p, _ in grads:
            p.grad = None
        try:
            return super().run_with_cache(*args, names_filter=names_filter, device=device, incl_bwd=True, **kwargs)
        finally:
            for p, g in grads:  # the backward's parameter gradients are dropped; any earlier ones come back
                p.grad = g

    # TransformerLens-style weights ---------------------------------------------------------------
    def _stack(self, get) -> Tensor:
        return torch.stack([get(block) for block in self.blocks])

    @property
    def W_Q(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack(lambda b: b.attn.W_Q)

    @property
    def W_K(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack(lambda b: b.attn.W_K)

    @property
    def W_V(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack(lambda b: b.attn.W_V)

    @property
    def W_O(self) -> Float[Tensor, "layer head d_head d_model"]:
        return self._stack(lambda b: b.attn.W_O)

    @property
    def b_Q(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack(lambda b: b.attn.b_Q)

    @property
    def b_K(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack(lambda b: b.attn.b_K)

    @property
    def b_V(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack(lambda b: b.attn.b_V)

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:
        return self._stack(lambda b: b.attn.b_O)

    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return self._stack(lambda b: b.mlp.W_in)

    @property
    def b_in(self) -> Float[Tensor, "layer d_mlp"]:
        return self._stack(lambda b: b.mlp.b_in)

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:
        return self._stack(lambda b: b.mlp.W_out)

    @property
    def b_out(self) -> Float[Tensor, "layer d_model"]:
        return self._stack(lambda b: b.mlp.b_out)

    @property
    def W_U(self) -> Float[Tensor, "d_model n_classes"]:
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, "n_classes"]:
        return self.unembed.b_U

    @property
    def W_pos(self) -> Float[Tensor, "pos d_model"]:
        return self.pos_embed.W_pos

    # Video-aware helpers -------------------------------------------------------------------------
    @property
    def grid(self):
        """The token grid: token position <-> (frame, row, column) and pixel boxes."""
        from vivit_lens.models.grid import TokenGrid

        return TokenGrid(self.cfg)

    @property
    def labels(self) -> dict[int, str]:
        return self.cfg.id2label

    def label_id(self, label: int | str) -> int:
        """The class index of a label name or index, with a clear error for unknown ones."""
        if isinstance(label, int) and 0 <= label < self.cfg.n_classes:
            return label
        if isinstance(label, str) and label in self.cfg.label2id:
            return self.cfg.label2id[label]
        raise KeyError(f"class {label!r} is not one of the model's {self.cfg.n_classes} classes")

    # Loading and saving --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
    ) -> HookedViViT:
        """Load a ViViT checkpoint: a local folder (HF or vivit_lens layout) or a Hugging Face hub id.

        `device`: cpu (default), cuda, cuda:N, mps or meta; `dtype`: float32 (default), bfloat16, float16 or
        float64 (a torch dtype or its name). Both are checked before the checkpoint is read.
        """
        from vivit_lens.models import loading
        from vivit_lens.models.placement import parse_device, parse_dtype

        device, dtype = parse_device(device), parse_dtype(dtype)
        files = loading.resolve(name_or_path, revision=revision, cache_dir=cache_dir)
        cfg = cls._config_from_json(files.config)
        processor = cls._processor_from_json(files.processor, cfg) if files.processor else None
        if processor is not None and processor.do_center_crop and processor.crop_size != cfg.image_size:
            raise ConfigError(
                f"{files.processor}: crop_size {processor.crop_size} does not match the model's image_size "
                f"{cfg.image_size} in {files.config.name}; the processor must produce the frames the model takes"
            )
        state = loading.read_state_dict(files.weights)
        model = cls(cfg, processor)
        model.load_hf_state_dict(state)
        return model.to(device=device, dtype=dtype)

    @classmethod
    def _config_from_json(cls, path: Path) -> ViViTConfig:
        """The architecture's config from a checkpoint's config.json (a subclass reads its own type)."""
        return ViViTConfig.from_json(path)

    @classmethod
    def _processor_from_json(cls, path: Path, cfg: ViViTConfig) -> ProcessorConfig:
        return ProcessorConfig.from_json(path)

    @classmethod
    def from_hf_model(cls, hf_model: nn.Module) -> HookedViViT:
        """Convert an in-memory transformers `VivitForVideoClassification`."""
        cfg = ViViTConfig.from_hf_dict(hf_model.config.to_dict())
        model = cls(cfg)
        model.load_hf_state_dict(hf_model.state_dict())
        return model

    def load_hf_state_dict(self, state: dict[str, Tensor]) -> None:
        """Fill every parameter from a checkpoint in either HF key scheme; strict, all-or-nothing."""
        from vivit_lens.models.convert import check_state_dict, hf_to_lens

        converted, unexpected = hf_to_lens(state, self.cfg)
        check_state_dict(converted, self.state_dict(), unexpected)
        self.load_state_dict(converted, strict=True)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write an HF folder (config.json, model.safetensors, preprocessor_config.json) that transformers loads."""
        from vivit_lens.models.convert import save_hf_folder

        save_hf_folder(self, folder)


# Argument checks ---------------------------------------------------------------------------------
def _check_names_filter(names_filter) -> None:
    ok = (
        names_filter is None
        or isinstance(names_filter, str)
        or callable(names_filter)
        or (isinstance(names_filter, (list, tuple, set, frozenset)) and all(isinstance(n, str) for n in names_filter))
    )
    if not ok:
        raise TypeError(
            "names_filter must be None (every hook), a hook name, a list of hook names, or a function "
            f"name -> bool; got {names_filter!r}"
        )


def _check_hook_list(hooks, what: str) -> None:
    pairs = isinstance(hooks, Sequence) and not isinstance(hooks, str)
    pairs = pairs and all(
        isinstance(h, (tuple, list)) and len(h) == 2 and (isinstance(h[0], str) or callable(h[0])) and callable(h[1])
        for h in hooks
    )
    if not pairs:
        hint = " (a single pair? wrap it in a list)" if isinstance(hooks, tuple) and len(hooks) == 2 else ""
        raise TypeError(
            f"{what} must be a list of (hook name or name -> bool, fn(activation, hook)) pairs{hint}; got {hooks!r}"
        )


def _checked_return(fn: Callable) -> Callable:
    """`fn`, with its return value checked: None (keep the activation) or a tensor of the same dtype and device."""

    @functools.wraps(fn)
    def checked(x: Tensor, hook: HookPoint):
        out = fn(x, hook=hook)
        if isinstance(out, Tensor) and (out.dtype != x.dtype or out.device != x.device):
            raise InputError(
                f"hook {getattr(fn, '__name__', fn)!r} on {hook.name} returned a {out.dtype} tensor on {out.device}; "
                f"the activation is {x.dtype} on {x.device} (return it converted, e.g. out.to(activation))"
            )
        if out is not None and not isinstance(out, Tensor):
            raise InputError(
                f"hook {getattr(fn, '__name__', fn)!r} on {hook.name} returned {type(out).__name__}; a forward hook "
                f"returns a tensor of shape {tuple(x.shape)} to replace the activation, or None to keep it"
            )
        return out

    return checked
