"""Whole-volume prediction, lesion report, and `mstoolkit segment` on odd, non-RAS grids; the fast path equals the previous one."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from mstoolkit.cli import main
from mstoolkit.data.io import Case, MSToolkitInputError, load_image
from mstoolkit.evaluation.metrics import label_lesions
from mstoolkit.segmentation.inference import (
    brain_region,
    lesion_report,
    predict,
    prepare_inputs,
    remove_small_lesions,
    segment_files,
    sliding_window_logits,
    window_starts,
)
from mstoolkit.segmentation.models import build_model, save_model


class _BrightFlair(nn.Module):
    """A fixed 'model': logit = 4·(FLAIR z-score − 2), so bright FLAIR voxels are lesions."""

    in_channels = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4.0 * (x[:, :1] - 2.0)


def _case(shape=(23, 30, 17)) -> Case:
    rng = np.random.default_rng(1)
    brain = np.zeros(shape, np.uint8)
    brain[2:-2, 3:-3, 2:-2] = 1
    flair = np.where(brain, rng.normal(100, 5, shape), 0).astype(np.float32)
    flair[10:14, 12:16, 7:10] = 200  # one 48-voxel lesion
    flair[4, 6, 4] = 200  # one single-voxel speck
    t1 = np.where(brain, rng.normal(300, 5, shape), 0).astype(np.float32)
    return Case("toy", {"FLAIR": flair, "T1": t1}, np.diag([0.9, 1.2, 1.5, 1.0]))


def test_prepare_inputs_zscore_within_brain():
    case = _case()
    inputs = prepare_inputs(case, ("FLAIR", "T1"))
    region = brain_region(case)
    assert inputs.shape == (2, *case.shape) and inputs.dtype == np.float32
    np.testing.assert_allclose(inputs[:, region].mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(inputs[:, region].std(axis=1), 1, atol=1e-4)
    assert not inputs[:, ~region].any()


def test_predict_on_input_grid_with_tta_and_min_size():
    case = _case()
    probability, mask = predict(_BrightFlair(), case, roi_size=(16, 16, 16), tta=True)
    assert probability.shape == mask.shape == case.shape and probability.dtype == np.float32
    assert mask.dtype == np.uint8 and int(mask.sum()) == 49
    assert probability.min() >= 0 and probability.max() <= 1
    _, cleaned = predict(_BrightFlair(), case, roi_size=(16, 16, 16), min_lesion_mm3=5.0)  # 1 voxel = 1.62 mm³
    assert int(cleaned.sum()) == 48 and cleaned[4, 6, 4] == 0
    model = _BrightFlair()
    model.min_lesion_mm3 = 5.0  # chosen on validation data at training time (load_model sets it)
    assert int(predict(model, case, roi_size=(16, 16, 16))[1].sum()) == 48  # the model's own default
    assert int(predict(model, case, roi_size=(16, 16, 16), min_lesion_mm3=0)[1].sum()) == 49  # 0 keeps all


def test_predict_matches_a_whole_volume_forward_pass():
    torch.manual_seed(0)
    # no normalisation layers: a forward pass on the brain's box equals one on the whole volume
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 1, 3, padding=1)).eval()
    case = _case((20, 20, 20))
    probability, _ = predict(model, case, roi_size=(24, 24, 24))  # one window covers the brain box
    with torch.no_grad():
        whole = torch.sigmoid(model(torch.as_tensor(prepare_inputs(case))[None]))[0, 0].numpy()
    region = brain_region(case)
    np.testing.assert_allclose(probability[region], whole[region], atol=1e-5)


def test_remove_small_lesions_uses_mm3():
    mask = np.zeros((9, 9, 9), np.uint8)
    mask[0, 0, 0] = 1
    mask[4:6, 4:6, 4:6] = 1
    assert remove_small_lesions(mask, spacing=(1, 1, 1), min_volume_mm3=8).sum() == 8
    assert remove_small_lesions(mask, spacing=(1, 1, 3), min_volume_mm3=3).sum() == 9
    assert remove_small_lesions(mask, spacing=(1, 1, 1), min_volume_mm3=9).sum() == 0
    labels, n = label_lesions(mask, spacing=(1, 1, 3), min_lesion_mm3=3)  # the metrics drop the same components
    assert n == 2 and np.array_equal(labels > 0, remove_small_lesions(mask, spacing=(1, 1, 3), min_volume_mm3=3) > 0)


def test_sliding_window_logits_fits_or_keeps_the_window():
    seen = []

    def model(x):
        seen.append(tuple(x.shape))
        return x[:, :1] * 2

    inputs = torch.arange(2 * 10 * 12 * 8, dtype=torch.float32).reshape(1, 2, 10, 12, 8)
    out = sliding_window_logits(model, inputs, (16, 16, 16), 0.25)
    assert seen == [(1, 2, 10, 12, 8)] and out.shape == (1, 1, 10, 12, 8)  # one window, shrunk to the volume
    torch.testing.assert_close(out, inputs[:, :1] * 2)
    seen.clear()
    sliding_window_logits(model, inputs, (16, 16, 16), 0.25, sw_batch_size=1, fit_to_volume=False)
    assert seen == [(1, 2, 16, 16, 16)]  # padded up to the window


def test_lesion_report_hand_computed():
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (10, 20, 30)
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[1:3, 1, 1] = 1  # 2 voxels, centroid (1.5, 1, 1) -> world (13, 21, 31)
    mask[5, 5, 5] = 1
    probability = mask * 0.7
    probability[2, 1, 1] = 0.9
    report = lesion_report(probability, mask, affine)
    assert report["lesion_count"] == 2 and report["total_volume_ml"] == pytest.approx(0.006)
    first = report["lesions"][0]
    assert first == {"id": 1, "volume_mm3": 4.0, "centroid_mm": [13.0, 21.0, 31.0], "max_probability": 0.9}


def test_bad_inputs_give_clear_errors():
    case = _case()
    with pytest.raises(MSToolkitInputError, match="takes 2 input channel"):
        predict(_BrightFlair(), case, sequences=("FLAIR",))
    no_flair = Case("t1only", {"T1": case.images["T1"]}, case.affine)
    with pytest.raises(MSToolkitInputError, match="has no FLAIR image"):
        predict(build_model("tiny_unet", in_channels=1), no_flair, sequences=("FLAIR",))
    flat = Case("2d", {"FLAIR": case.images["FLAIR"][:, :, 5]}, case.affine)
    with pytest.raises(MSToolkitInputError, match=r"expected a 3D volume"):
        predict(build_model("tiny_unet", in_channels=1), flat, sequences=("FLAIR",))
    with pytest.raises(MSToolkitInputError, match="'threshold' must be between 0 and 1"):
        predict(_BrightFlair(), case, threshold=1.5)


@pytest.fixture
def odd_files(tmp_path):
    """FLAIR and T1 files on an odd, non-RAS (LPI, oblique-free, anisotropic) grid."""
    case = _case()
    affine = np.array([[-0.9, 0, 0, 30.0], [0, 0, 1.5, -20.0], [0, -1.2, 0, 15.0], [0, 0, 0, 1]])  # axes L, I→S swap
    paths = {}
    for name, image in case.images.items():
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(image), affine), paths[name])
    return paths


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny_unet", in_channels=2, features=(4, 8))
    config = {"name": "tiny_unet", "features": [4, 8], "sequences": ["FLAIR", "T1"], "title": "toy model", "version": "0"}
    return save_model(tmp_path / "model.pt", model, config)


def test_segment_writes_outputs_on_the_flair_grid(odd_files, checkpoint, tmp_path):
    out = tmp_path / "out"
    code = main(["segment", "--flair", str(odd_files["FLAIR"]), "--t1", str(odd_files["T1"]), "--out", str(out),
                 "--model", str(checkpoint), "--device", "cpu", "--min-lesion-mm3", "2"])
    assert code == 0
    flair = nib.load(odd_files["FLAIR"])
    for name in ("lesion_mask.nii.gz", "lesion_probability.nii.gz"):
        written = nib.load(out / name)
        assert written.shape == flair.shape
        np.testing.assert_allclose(written.affine, flair.affine)
    mask = np.asarray(nib.load(out / "lesion_mask.nii.gz").dataobj)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == "toy model" and set(report["inputs"]) == {"FLAIR", "T1"}
    assert report["lesion_count"] == len(report["lesions"])
    # the report describes the mask that was written, in world mm
    voxel_mm3 = 0.9 * 1.2 * 1.5
    assert report["total_volume_ml"] == pytest.approx(mask.sum() * voxel_mm3 / 1000, abs=1e-4)
    ras_mask, ras_affine = load_image(out / "lesion_mask.nii.gz")
    for lesion in report["lesions"]:
        assert lesion["volume_mm3"] >= 2 and 0 <= lesion["max_probability"] <= 1
        voxel = np.linalg.inv(ras_affine) @ np.append(lesion["centroid_mm"], 1)
        assert all(-0.5 <= v <= s - 0.5 for v, s in zip(voxel[:3], ras_mask.shape))


def test_segment_matches_predict_with_a_known_model(odd_files, tmp_path, monkeypatch):
    # With the bright-FLAIR rule, the written mask must hold exactly the planted lesion and speck.
    import mstoolkit.segmentation.models as models

    monkeypatch.setattr(models, "load_model", lambda source, device="cpu": (_BrightFlair(), {"name": "rule", "sequences": ["FLAIR", "T1"]}))
    report = segment_files(odd_files["FLAIR"], tmp_path / "o", t1=odd_files["T1"], device="cpu")
    assert report["lesion_count"] == 2 and [lesion["volume_mm3"] for lesion in report["lesions"]] == pytest.approx([77.76, 1.62])
    mask = np.asarray(nib.load(tmp_path / "o" / "lesion_mask.nii.gz").dataobj)  # the file's own voxel order
    assert mask[10:14, 12:16, 7:10].all() and mask[4, 6, 4] == 1 and mask.sum() == 49


@pytest.mark.parametrize("kind", ["text", "nifti", "truncated", "other_architecture"])
def test_segment_with_a_file_that_is_not_a_checkpoint(kind, odd_files, checkpoint, tmp_path, capsys):
    """`segment --model FILE` with a wrong file: one line naming the file and the fix, no traceback, no output."""
    bad = tmp_path / f"{kind}.pt"
    if kind == "text":
        bad.write_text("not a model\n")
    elif kind == "nifti":
        bad = odd_files["T1"]
    elif kind == "truncated":
        bad.write_bytes(checkpoint.read_bytes()[:2000])
    else:  # a real checkpoint whose weights belong to another network
        torch.save({"model": {"head.weight": torch.zeros(3)}, "config": {"name": "tiny_unet", "sequences": ["FLAIR", "T1"]}}, bad)
    code = main(["segment", "--flair", str(odd_files["FLAIR"]), "--t1", str(odd_files["T1"]),
                 "--out", str(tmp_path / "o"), "--model", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and bad.name in err and "mstoolkit train" in err
    assert not (tmp_path / "o").exists()


def test_segment_errors(odd_files, checkpoint, tmp_path, capsys):
    code = main(["segment", "--flair", str(tmp_path / "missing.nii.gz"), "--t1", str(odd_files["T1"]),
                 "--out", str(tmp_path / "o"), "--model", str(checkpoint)])
    assert code == 2 and "No such image file" in capsys.readouterr().err
    with pytest.raises(MSToolkitInputError, match="T1 missing: pass --t1 FILE"):
        segment_files(odd_files["FLAIR"], tmp_path / "o", model=checkpoint)
    other = tmp_path / "shifted.nii.gz"
    img = nib.load(odd_files["T1"])
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine + np.array([[0, 0, 0, 5.0]] + [[0] * 4] * 3)), other)
    with pytest.raises(MSToolkitInputError, match="pass --register"):
        segment_files(odd_files["FLAIR"], tmp_path / "o", t1=other, model=checkpoint)
    four_d = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7, 2), np.float32), np.eye(4)), four_d)
    with pytest.raises(MSToolkitInputError, match="expected a 3D volume"):
        segment_files(four_d, tmp_path / "o", t1=odd_files["T1"], model=checkpoint)
    assert not (tmp_path / "o").exists()  # nothing half-written


# --------------------------------------------------------------------------- the fast path equals the previous one


def _toy_unet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("tiny_unet", in_channels=2, features=(4, 8)).eval()  # instance norm: every window's context counts


def test_window_starts_are_monais():
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for size, window, overlap in [(180, 96, 0.25), (144, 96, 0.25), (96, 96, 0.25), (20, 7, 0.5), (33, 16, 0.9), (5, 5, 0.0)]:
        interval = _get_scan_interval((size,), (window,), 1, (overlap,))
        expected = sorted({s[0].start for s in dense_patch_slices((size,), (window,), interval)})
        assert window_starts(size, window, overlap) == expected, (size, window, overlap)


@pytest.mark.parametrize("batch, windows_at_once, fit", [(1, 1, True), (1, 3, True), (2, 2, False)])
def test_sliding_window_logits_equals_monais(batch, windows_at_once, fit, one_thread):
    model = _toy_unet()
    inputs = torch.randn(batch, 2, 21, 26, 11, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # (12, 12, 16): several windows along x and y; along z larger than the volume
        ours = sliding_window_logits(model, inputs, (12, 12, 16), 0.25, sw_batch_size=windows_at_once, fit_to_volume=fit)
        monais = sliding_window_logits(model, inputs, (12, 12, 16), 0.25, sw_batch_size=windows_at_once,
                                       fit_to_volume=fit, use_monai=True)
    assert ours.shape == monais.shape == (batch, 1, 21, 26, 11)
    torch.testing.assert_close(ours, monais, rtol=0, atol=1e-5)


@pytest.fixture
def one_thread():
    """Many tiny windows: on a busy machine two threads wait on each other at every layer (results are the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fast_predict_gives_the_previous_mask(one_thread):
    from mstoolkit.evaluation.metrics import dice

    case = _case((30, 34, 24))
    model = _toy_unet()
    model.threshold = 0.5
    # float32 on both sides: this checks the windows and their blending (bfloat16 is checked below)
    fast_probability, fast_mask = predict(model, case, roi_size=(20, 20, 20), tta=True, precision="float32")  # 8 windows, 4 flips
    previous_probability, previous_mask = predict(model, case, roi_size=(20, 20, 20), tta=True, fast=False)
    np.testing.assert_allclose(fast_probability, previous_probability, atol=1e-5)
    assert fast_mask.any() and dice(fast_mask, previous_mask) >= 0.999
    assert label_lesions(fast_mask, spacing=case.spacing)[1] == label_lesions(previous_mask, spacing=case.spacing)[1]


def test_precision_auto_takes_bfloat16_only_where_it_was_verified(monkeypatch):
    from mstoolkit.segmentation import inference
    from mstoolkit.segmentation.inference import inference_precision

    tiny, other = _toy_unet(), build_model("attention_unet", in_channels=2, features=(4, 8, 16))
    cpu = torch.device("cpu")
    monkeypatch.setattr(inference, "cpu_has_native_bfloat16", lambda: True)
    assert inference_precision(tiny, cpu) == "bfloat16"
    assert inference_precision(other, cpu) == "float32"  # not measured against float32: never by default
    assert inference_precision(tiny, torch.device("meta")) == "float32"  # GPUs and the rest keep float32
    assert inference_precision(other, cpu, "bfloat16") == "bfloat16"  # asked for explicitly
    monkeypatch.setattr(inference, "cpu_has_native_bfloat16", lambda: False)
    assert inference_precision(tiny, cpu) == "float32"  # emulated bfloat16 is slower than float32
    with pytest.raises(MSToolkitInputError, match="Unknown precision 'half'; allowed: auto, float32, bfloat16"):
        inference_precision(tiny, cpu, "half")


def test_bfloat16_predict_stays_close_to_float32_and_keeps_float32_logits(one_thread):
    case = _case((30, 34, 24))
    model = _toy_unet()
    float32, _ = predict(model, case, roi_size=(20, 20, 20), precision="float32")
    bfloat16, _ = predict(model, case, roi_size=(20, 20, 20), precision="bfloat16")
    assert not np.array_equal(float32, bfloat16)  # bfloat16 did run
    assert np.abs(float32 - bfloat16).max() < 0.05
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.zeros(1, 2, 8, 8, 8)).dtype == torch.float32  # the output layer stays float32


class _FakeLibc:
    """Stands in for glibc: records the mallopt calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, option: int, value: int) -> int:
        self.calls.append((option, value))
        return 1


def test_freed_memory_setting_is_undone_even_on_error(monkeypatch):
    import mstoolkit.segmentation.inference as inference

    libc = _FakeLibc()
    monkeypatch.setattr(inference.sys, "platform", "linux")
    monkeypatch.setattr(inference.ctypes, "CDLL", lambda name: libc)
    with pytest.raises(RuntimeError), inference.keep_freed_memory_for_reuse():
        assert libc.calls == [(-3, 1 << 30), (-1, 1 << 30)]  # raised while the windows run
        raise RuntimeError("a window failed")
    assert libc.calls[2:] == [(-3, 128 * 1024), (-1, 128 * 1024)]  # glibc's own start values again


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_fast_predict_without_glibc(platform, monkeypatch):
    """Where libc.so.6 is not glibc (musl) or not there (macOS, Windows), the fast path runs as it is."""
    import mstoolkit.segmentation.inference as inference

    def no_glibc(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(inference.sys, "platform", platform)
    monkeypatch.setattr(inference.ctypes, "CDLL", no_glibc)
    case = _case()
    probability, mask = predict(_BrightFlair(), case, roi_size=(16, 16, 16))
    assert int(mask.sum()) == 49
    np.testing.assert_allclose(probability, predict(_BrightFlair(), case, roi_size=(16, 16, 16), fast=False)[0], atol=1e-6)


def test_fast_predict_does_not_import_monai():
    """MONAI takes ~2 s to import, a third of `mstoolkit segment`'s time: the fast path does without it."""
    import subprocess
    import sys

    code = ("import sys, torch; from mstoolkit.segmentation.inference import predict; from mstoolkit.data.io import Case; "
            "import numpy as np; image = np.ones((20, 20, 20), np.float32); image[5:9] = 3; "
            "model = torch.nn.Conv3d(2, 1, 3, padding=1); model.in_channels = 2; "
            "predict(model, Case('c', {'FLAIR': image, 'T1': image.copy()}, np.eye(4)), roi_size=(12, 12, 12)); "
            "print('monai' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
