"""Files in and out: video decoding / encoding, output folders that are complete or absent, the shipped assets
(the files themselves are in vivit_lens/assets/).
"""
