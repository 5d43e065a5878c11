from vivit_lens import HookedViViT, video
from vivit_lens.assets import pair_paths, tiny_model_path
from vivit_lens.metrics import SignalRecovery, final_resid_hook
from vivit_lens.patching import get_act_patch_attn_head_out_all_pos

model = HookedViViT.from_pretrained(tiny_model_path())   # or "google/vivit-b-16x2-kinetics400", or a local HF folder
strike, gutter, _ = pair_paths("bowling")                # or your own strike.mp4 and gutter.mp4
n = model.cfg.num_frames                                 # 16 for the shipped model, 32 for ViViT-B
clean = video.preprocess(video.load(strike, num_frames=n), model.processor)     # [1, n, 3, height, width]
corrupt = video.preprocess(video.load(gutter, num_frames=n), model.processor)
logits, clean_cache = model.run_with_cache(clean)
_, corrupt_cache = model.run_with_cache(corrupt)
metric = SignalRecovery.from_caches(clean_cache, corrupt_cache, final_resid_hook(model))   # the paper's % recovery
heads = get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, metric)          # [layer head], in %
print(heads)
