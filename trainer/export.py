"""Export a trained run as one graph, waveform in and logits out (mel front-end + PaSST in evaluation mode), and
check the exported graph against the eager model.

    python -m trainer.export runs/tau/<run> --format torchscript     # -> runs/tau/<run>/model.torchscript.pt
    python -m trainer.export runs/tau/<run> --format onnx            # -> runs/tau/<run>/model.onnx ('.[export]')

The graph takes float32 waveforms [batch, samples] at the run's sample rate; `samples` is fixed to the clip
length it is exported for (`--seconds`, default the run's data.clip_seconds), so a long clip's evaluation
windows are part of the graph; the batch size is free.  Both formats carry the class names, the sample rate
and the clip length (TorchScript: extra files; ONNX: metadata properties).  The check runs random clips
through both and prints the largest absolute difference of the logits; above 1e-4 the export fails.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from .inference import TrainedModel, load_trained

FORMATS = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
TOLERANCE = 1e-4


@torch.jit.script
def _check_samples(wave: torch.Tensor, samples: int) -> torch.Tensor:
    if wave.dim() != 2 or wave.size(1) != samples:
        raise RuntimeError("this graph takes float32 waveforms [batch, " + str(samples) + "]")
    return wave


class _Checked(nn.Module):
    """The classifier behind a scripted shape check (traced code alone would bake the length in silently)."""

    def __init__(self, classifier: nn.Module, samples: int):
        super().__init__()
        self.classifier, self.samples = classifier, samples

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.classifier(_check_samples(wave, self.samples))


def _metadata(trained: TrainedModel, samples: int) -> dict[str, str]:
    return {"classes": json.dumps(trained.classes), "sample_rate": str(trained.sample_rate), "samples": str(samples),
            "source": str(trained.path)}


def _onnx_session(path: Path):
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeError("checking an ONNX export needs onnxruntime: pip install '.[export]'") from None
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def export(trained: TrainedModel, fmt: str, out: Path, seconds: float | None = None) -> float:
    """Write `trained` as `fmt` to `out`; returns the largest |exported - eager| over random clips."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose {' or '.join(FORMATS)}")
    seconds = seconds or trained.config.data.clip_seconds
    if not seconds:
        raise ValueError(f"{trained.path}: give --seconds (the run has no fixed clip length)")
    samples = int(round(seconds * trained.sample_rate))
    classifier = trained.classifier.float().cpu().eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, samples, generator=generator) * 0.1
    clips = torch.randn(3, samples, generator=generator) * 0.1  # another batch size than the example's
    meta = _metadata(trained, samples)
    with torch.no_grad():
        eager = classifier(clips)
        if fmt == "torchscript":
            traced = torch.jit.trace(_Checked(classifier, samples), example)
            torch.jit.save(traced, str(out), _extra_files={f"{k}.txt": v for k, v in meta.items()})
            exported = torch.jit.load(str(out))(clips)
        else:
            try:
                import onnx
            except ImportError:
                raise RuntimeError("ONNX export needs the onnx and onnxscript packages: pip install '.[export]'") from None
            program = torch.onnx.export(classifier, (example,), dynamo=True, input_names=["waveform"],
                                        output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
            program.save(str(out))
            model = onnx.load(str(out))
            for key, value in meta.items():
                model.metadata_props.add(key=key, value=value)
            onnx.save(model, str(out))
            session = _onnx_session(out)
            exported = torch.from_numpy(session.run(None, {"waveform": clips.numpy()})[0])
    return float((exported - eager).abs().max())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="run folder or model.pt")
    p.add_argument("--format", default="torchscript", choices=list(FORMATS))
    p.add_argument("--seconds", type=float, help="clip length the graph takes (default: the run's data.clip_seconds)")
    p.add_argument("--out", type=Path, help="default: beside model.pt")
    args = p.parse_args(argv)
    try:
        trained = load_trained(args.model)
        out = args.out or trained.path.with_name(FORMATS[args.format])
        diff = export(trained, args.format, out, args.seconds)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verdict = "OK" if diff < TOLERANCE else f"FAILED (tolerance {TOLERANCE:g})"
    print(f"{args.format} export {out}: max |exported - eager| over 3 random clips = {diff:.3g} {verdict}")
    if diff >= TOLERANCE:
        out.unlink(missing_ok=True)  # no half-right graph left behind that looks complete
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
