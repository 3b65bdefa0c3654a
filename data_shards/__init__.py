"""Offline packing of audio datasets into WebDataset shards with DALI indexes and a manifest.

`python -m data_shards pack|verify|info|demo ...`; the shard contract is described in README.md.
"""
PACKER_VERSION = "1.1.0"  # 1.1.0: the numeric `.labels` member
