"""Helpers shared by the tests."""
from __future__ import annotations

import json
from pathlib import Path

from data_shards.manifest import load_manifest
from data_shards.shards import iter_samples
from data_shards.sources import demo

# Small but complete: every split, every TAU device group, 10-s CochlScene clips.
TINY = demo.DemoSize(cochl_train=2, cochl_val=1, cochl_test=1, tau_train_recordings=2,
                     tau_test_recordings=1, tau_segments=2, tau_devices_per_recording=2)

def read_split(folder: Path, split: str) -> list[tuple[str, dict, bytes]]:
    """(key, metadata, audio bytes) of every sample of a split, in shard order."""
    manifest = load_manifest(folder)
    ext = manifest["audio_extension"]
    samples = []
    for shard in manifest["splits"][split]["shards"]:
        for key, members in iter_samples(folder / shard["path"]):
            samples.append((key, json.loads(members["json"]), members[ext]))
    return samples
