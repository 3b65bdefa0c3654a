"""Using a trained model: predictions (DCASE system output), ensembles, teacher logits, multi-rank prediction,
export, and the errors for bad input.  One small TAU run is trained for real; a second "run" is derived from it."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from data_shards.manifest import load_manifest
from trainer import checkpoint
from trainer.config import load_config
from trainer.configtools import to_dict
from trainer.data import make_loader
from trainer.data.teacher import TeacherLogits
from trainer.inference import load_trained
from trainer.model.passt import create_model

from .helpers import REPO, TRAIN, logs, run_command, start_ranks, train_overrides, wait_ranks

PREDICT = REPO / "launch" / "predict.py"


@pytest.fixture(scope="module")
def runs(trainable, demo_root, tmp_path_factory) -> dict[str, Path]:
    """A TAU run trained for real (1 epoch, fp32), a second run with other head weights, and a 13-class model."""
    root = tmp_path_factory.mktemp("predict_runs")
    overrides = train_overrides(trainable, root, "a", dataset="tau22", train__epochs=1, init_from="null")
    done = run_command([sys.executable, str(TRAIN), "--stage", "tau", *overrides])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    a = root / "tau" / "a"
    saved = torch.load(a / "model.pt", weights_only=True)
    b = root / "tau" / "b"
    b.mkdir()
    torch.manual_seed(1)
    saved["state_dict"] = {k: v + 0.05 * torch.randn_like(v) if k.startswith("head.") else v
                           for k, v in saved["state_dict"].items()}
    torch.save(saved, b / "model.pt")
    cochl = load_config("cochl", train_overrides(trainable, root, "c"))
    classes = load_manifest(trainable / "cochlscene")["classes"]
    other = checkpoint.export_model(create_model("passt_micro", len(classes)), root / "cochl.pt", classes, to_dict(cochl))
    return {"a": a, "b": b, "cochl": other, "tau_root": demo_root["tau22"]}


def _predict(*args, cwd_out: Path) -> tuple[pd.DataFrame, str]:
    """launch/predict.py on the CPU on every machine: its numbers are checked against CPU computations."""
    out = cwd_out / "out.csv"
    done = run_command([sys.executable, str(PREDICT), *map(str, args), "--out", str(out), "--workers", "1",
                        "--batch-size", "5", "--device", "cpu"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return pd.read_csv(out, sep="\t"), done.stdout


def _logits(npz: Path) -> dict[str, np.ndarray]:
    with np.load(npz, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def test_predictions_equal_the_trainers_evaluation(runs, trainable, tmp_path):
    out, stdout = _predict("--model", runs["a"], "--shards", trainable / "tau22", "--split", "test",
                           "--logits", tmp_path / "test.npz", cwd_out=tmp_path)
    summary = json.loads((runs["a"] / "summary.json").read_text())["test"]
    saved = _logits(tmp_path / "test.npz")
    labels = torch.from_numpy(saved["labels"])
    # the same logits as the model itself on the loader's evaluation batches, computed here independently
    trained = load_trained(runs["a"])
    batches = list(make_loader(trainable / "tau22", "test", batch_size=4, training=False, num_workers=1,
                               clip_seconds=1.0))
    with torch.no_grad():
        direct = torch.cat([trained.classifier(b["audio"])[b["valid"]] for b in batches])
    keys = [k for b in batches for k, v in zip(b["key"], b["valid"]) if v]
    assert saved["keys"].tolist() == keys
    np.testing.assert_allclose(saved["logits"], direct.numpy(), rtol=1e-5, atol=1e-6)
    # the same metrics as the trainer's test evaluation of that model
    assert len(out) == summary["num_samples"] == len(labels)
    pred = torch.from_numpy(saved["logits"]).argmax(1)
    assert (pred == labels).double().mean().item() == pytest.approx(summary["accuracy"])
    log_loss = -torch.log_softmax(torch.from_numpy(saved["logits"]).double(), 1)[range(len(labels)), labels].mean()
    assert log_loss.item() == pytest.approx(summary["log_loss"], rel=1e-5)
    assert f"{100 * summary['macro_accuracy']:.2f}" in stdout and "devices unseen %" in stdout
    # the DCASE layout: filename (the source path), the most probable class, one probability per class in order
    classes = summary["per_class"].keys()
    assert list(out.columns) == ["filename", "scene_label", *classes]
    probs = out[list(classes)].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert (out["scene_label"] == [list(classes)[i] for i in probs.argmax(1)]).all()
    assert out["filename"].str.startswith("audio/").all() and out["filename"].is_unique


def test_an_ensemble_is_the_mean_of_its_runs_logits(runs, trainable, tmp_path):
    logits = {}
    for name, models in (("a", [runs["a"]]), ("b", [runs["b"]]), ("ab", [runs["a"], runs["b"] / "model.pt"])):
        _predict("--model", *models, "--shards", trainable / "tau22", "--split", "test", "--logits",
                 tmp_path / f"{name}.npz", cwd_out=tmp_path)
        logits[name] = _logits(tmp_path / f"{name}.npz")["logits"]
    assert not np.allclose(logits["a"], logits["b"])
    np.testing.assert_allclose(logits["ab"], (logits["a"] + logits["b"]) / 2, rtol=1e-5, atol=1e-6)


@pytest.fixture()
def audio_folder(runs, tmp_path) -> Path:
    """TAU clips as files, plus one at 32 kHz (resampled on reading) and one 3-s clip (longer than the others)."""
    folder = tmp_path / "eval" / "audio"
    folder.mkdir(parents=True)
    sources = sorted((runs["tau_root"] / "audio").glob("*.wav"))[:4]
    for src in sources:
        shutil.copy(src, folder / src.name)
    wave, rate = sf.read(str(sources[0]), dtype="float32")
    sf.write(str(folder / "at32k.flac"), AF.resample(torch.from_numpy(wave), rate, 32000).numpy(), 32000)
    (folder / "sub").mkdir()
    sf.write(str(folder / "sub" / "long.wav"), np.tile(wave, 3), rate)
    return folder


def _reference_logits(run: Path, path: Path) -> np.ndarray:
    """The model on one file decoded and resampled here, independently of the file reader."""
    trained = load_trained(run)
    wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(wave.mean(1))
    if rate != trained.sample_rate:
        wave = AF.resample(wave, rate, trained.sample_rate)
    with torch.no_grad():
        return trained.classifier(wave[None])[0].numpy()


def test_unlabelled_folders_and_csvs_are_predicted(runs, audio_folder, tmp_path):
    out, stdout = _predict("--model", runs["a"], "--folder", audio_folder, "--logits", tmp_path / "f.npz",
                           cwd_out=tmp_path)
    names = sorted(p.relative_to(audio_folder).as_posix() for p in audio_folder.rglob("*.*"))
    assert sorted(out["filename"]) == names and "accuracy" not in stdout
    saved = _logits(tmp_path / "f.npz")
    for name in ("at32k.flac", "sub/long.wav", names[0]):
        row = saved["keys"].tolist().index(name)
        np.testing.assert_allclose(saved["logits"][row], _reference_logits(runs["a"], audio_folder / name),
                                   rtol=1e-4, atol=1e-5)
    # a DCASE-style list: paths relative to --root, in the CSV's order in the output, labels optional
    listed = ["audio/" + n for n in names[::-1]]
    pd.DataFrame({"filename": listed}).to_csv(tmp_path / "test.csv", sep="\t", index=False)
    out_csv, _ = _predict("--model", runs["a"], "--csv", tmp_path / "test.csv", "--root", audio_folder.parent,
                          cwd_out=tmp_path)
    assert out_csv["filename"].tolist() == listed
    labels = [n.split("-")[0] if "-" in n else "airport" for n in names[::-1]]
    pd.DataFrame({"filename": listed, "scene_label": labels}).to_csv(tmp_path / "lab.csv", sep="\t", index=False)
    _, stdout = _predict("--model", runs["a"], "--csv", tmp_path / "lab.csv", "--root", audio_folder.parent,
                         cwd_out=tmp_path)
    assert "accuracy %" in stdout and f"(n={len(listed)})" in stdout


def test_two_ranks_predict_every_clip_exactly_once(runs, trainable, audio_folder, tmp_path):
    for args in (["--shards", trainable / "tau22", "--split", "test"], ["--folder", audio_folder]):
        single, _ = _predict("--model", runs["a"], *args, cwd_out=tmp_path)
        (tmp_path / "logs").mkdir(exist_ok=True)
        out = tmp_path / "two.csv"
        procs = start_ranks(["--model", str(runs["a"]), *map(str, args), "--out", str(out), "--workers", "1",
                             "--batch-size", "2", "--device", "cpu"], tmp_path / "logs", script=PREDICT)
        assert wait_ranks(procs) == [0, 0], logs(tmp_path / "logs")
        two = pd.read_csv(out, sep="\t")
        assert two["filename"].is_unique and sorted(two["filename"]) == sorted(single["filename"])
        merged = single.merge(two, on="filename", suffixes=("", "_2"))
        classes = single.columns[2:]
        np.testing.assert_allclose(merged[classes].to_numpy(), merged[[c + "_2" for c in classes]].to_numpy(),
                                   atol=2e-6)


def test_teacher_logits_follow_a_shuffled_batch(runs, trainable, tmp_path):
    _predict("--model", runs["a"], runs["b"], "--shards", trainable / "tau22", "--split", "train",
             "--logits", tmp_path / "teacher.npz", cwd_out=tmp_path)
    saved = _logits(tmp_path / "teacher.npz")
    by_key = dict(zip(saved["keys"].tolist(), saved["logits"]))
    assert set(saved["names"].tolist()) and len(by_key) == len(saved["keys"])
    loader = make_loader(trainable / "tau22", "train", batch_size=4, training=True, num_workers=1, seed=3)
    teacher = TeacherLogits(tmp_path / "teacher.npz", classes=loader.classes)
    seen = 0
    for batch in loader:  # shuffled, so rows come in another order than the file's
        got = teacher(batch["key"])
        np.testing.assert_array_equal(got.numpy(), np.stack([by_key[k] for k in batch["key"]]))
        seen += len(got)
    assert seen > 8
    with pytest.raises(KeyError, match="no logits for 1 of the batch's keys"):
        teacher(["not-a-key"])
    with pytest.raises(ValueError, match="the student's classes are"):
        TeacherLogits(tmp_path / "teacher.npz", classes=["x"] * 10)


def test_torchscript_export_matches_eager_and_checks_its_input(runs, tmp_path):
    out = tmp_path / "model.ts"
    done = run_command([sys.executable, "-m", "trainer.export", str(runs["a"]), "--format", "torchscript",
                        "--out", str(out)])
    assert done.returncode == 0 and " OK" in done.stdout, done.stdout + done.stderr[-3000:]
    extra = {"classes.txt": "", "sample_rate.txt": "", "samples.txt": ""}
    graph = torch.jit.load(str(out), _extra_files=extra)
    trained = load_trained(runs["a"])
    assert json.loads(extra["classes.txt"]) == trained.classes and int(extra["samples.txt"]) == 44100
    clips = torch.randn(5, 44100) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(graph(clips), trained.classifier(clips), rtol=1e-5, atol=1e-5)
    with pytest.raises(torch.jit.Error, match=r"takes float32 waveforms \[batch, 44100\]"):
        graph(torch.randn(2, 32000))


def test_onnx_export_matches_eager(runs, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    done = run_command([sys.executable, "-m", "trainer.export", str(runs["a"]), "--format", "onnx", "--out", str(out)],
                       timeout=600)
    assert done.returncode == 0 and " OK" in done.stdout, done.stdout + done.stderr[-3000:]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["classes"]) == load_trained(runs["a"]).classes
    clips = torch.randn(4, 44100) * 0.1
    with torch.no_grad():
        eager = load_trained(runs["a"]).classifier(clips).numpy()
    np.testing.assert_allclose(session.run(None, {"waveform": clips.numpy()})[0], eager, rtol=1e-4, atol=1e-4)


def test_bad_inputs_stop_with_a_message_naming_the_file(runs, trainable, audio_folder, tmp_path):
    def fails(*args) -> str:
        done = run_command([sys.executable, str(PREDICT), *map(str, args), "--out", str(tmp_path / "x.csv")])
        assert done.returncode == 2, done.stdout + done.stderr
        assert not (tmp_path / "x.csv").exists()  # nothing half-written
        return done.stderr

    assert "nowhere: no such model file" in fails("--model", tmp_path / "nowhere", "--folder", audio_folder)
    err = fails("--model", runs["a"], runs["cochl"], "--folder", audio_folder)
    assert "cannot ensemble" in err and "cochl.pt (13 classes" in err and "(10 classes" in err
    (audio_folder / "broken.wav").write_bytes(b"RIFF not really audio")
    assert "cannot read audio file" in (err := fails("--model", runs["a"], "--folder", audio_folder)) and "broken.wav" in err
    assert "give exactly one input" in fails("--model", runs["a"])
    assert "--shards needs --split" in fails("--model", runs["a"], "--shards", trainable / "tau22")
    pd.DataFrame({"filename": ["audio/missing.wav"]}).to_csv(tmp_path / "m.csv", sep="\t", index=False)
    assert "m.csv:2:" in (err := fails("--model", runs["a"], "--csv", tmp_path / "m.csv")) and "missing.wav not found" in err
    pd.DataFrame({"filename": ["x.wav"], "scene_label": ["beach"]}).to_csv(tmp_path / "l.csv", sep="\t", index=False)
    shutil.copy(audio_folder / "sub" / "long.wav", tmp_path / "x.wav")
    assert "label 'beach' is not one of the model's classes" in fails("--model", runs["a"], "--csv", tmp_path / "l.csv")
