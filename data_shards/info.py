"""`info`: a readable summary of a packed dataset, from its manifest alone (instant on any size)."""
from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from .manifest import load_manifest


def summary(folder: Path) -> str:
    m = load_manifest(folder)
    splits = m["splits"]
    lines = [
        f"dataset {m.get('dataset')} (source {m.get('source')}, packer {m['packer_version']}): {folder}",
        f"audio: {m['audio_format']} at {m['sample_rate']} Hz, typical clip {m.get('clip_seconds')} s; "
        f"{len(m['classes'])} classes; rejected {m.get('num_rejected', 0)} file(s)"
        + (f"; converted: {', '.join(f'{k} {v}' for k, v in m['conversions'].items())}" if m.get("conversions") else ""),
        "",
        tabulate([[s, i["num_samples"], len(i["shards"]), f"{sum(x['bytes'] for x in i['shards']) / 2**20:.1f}",
                   f"{i.get('seconds', 0) / 3600:.3f}"] for s, i in splits.items()],
                 headers=["split", "clips", "shards", "MiB", "hours"], tablefmt="github"),
        "",
        tabulate([[c] + [i.get("class_counts", {}).get(c, 0) for i in splits.values()] for c in m["classes"]]
                 + [["total"] + [i["num_samples"] for i in splits.values()]],
                 headers=["class"] + list(splits), tablefmt="github"),
    ]
    devices = sorted({d for i in splits.values() for d in i.get("device_counts", {})},
                     key=lambda d: (m["devices"].index(d) if d in m["devices"] else len(m["devices"]), d))
    if m["devices"]:
        lines += ["", tabulate([[d] + [i.get("device_counts", {}).get(d, 0) for i in splits.values()] for d in devices],
                               headers=["device"] + list(splits), tablefmt="github")]
    return "\n".join(lines)
