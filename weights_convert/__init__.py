"""Command-line checkpoint conversion between Hugging Face ViViT folders and vivit_lens folders."""
