"""memory.keep_freed_memory: an allocator setting that the CLI makes, with no effect on any number."""

from __future__ import annotations

import platform

import torch

from vivit_lens import HookedViViT, assets
from vivit_lens.interp.memory import keep_freed_memory


def test_keep_freed_memory_sets_glibc_and_changes_no_result():
    """On glibc, mallopt accepts both settings (True); elsewhere it is a no-op (False). Either way a cache after
    it holds exactly what it held before: an allocator setting, not a numerical one."""
    model = HookedViViT.from_pretrained(assets.tiny_model_path())
    x = torch.randn(1, model.cfg.num_frames, 3, *model.cfg.image_size)
    names = lambda n: n.endswith(("hook_resid_post", "hook_z"))  # noqa: E731
    with torch.no_grad():
        logits, before = model.run_with_cache(x, names_filter=names)
        assert keep_freed_memory() == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
        again, after = model.run_with_cache(x, names_filter=names)
    assert torch.equal(logits, again) and list(before.keys()) == list(after.keys())
    assert all(torch.equal(before[k], after[k]) for k in before.keys())
