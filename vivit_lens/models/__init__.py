"""The hookable architectures: hook points and blocks, configs, HookedViViT (vivit.py) and HookedVideoMAE,
checkpoint conversion and loading, `from_pretrained` for both, the token grid, device / dtype placement.
"""
