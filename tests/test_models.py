"""Networks: output shapes for odd sizes, helpers, saving and loading."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.segmentation.models import (
    MODEL_NAMES,
    NOTEBOOK_CHECKPOINT,
    REFERENCE_DIR,
    TinyUNet,
    build_model,
    count_parameters,
    load_model,
    model_in_channels,
    notebook_model,
    receptive_field,
    save_model,
)


@pytest.mark.parametrize("name", ["tiny_unet", "unet", "attention_unet"])
def test_output_shape_for_odd_input(name):
    model = build_model(name, in_channels=2, features=(4, 8, 16) if name != "tiny_unet" else (4, 8, 16))
    out = model(torch.randn(1, 2, 23, 30, 17))
    assert out.shape == (1, 1, 23, 30, 17)


def test_swin_unetr_odd_input():
    pytest.importorskip("einops")
    model = build_model("swin_unetr", in_channels=2, features=(12,))
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, 23, 30, 17)).shape == (1, 1, 23, 30, 17)


def test_tiny_unet_matches_monai_unet_interface():
    # Same contract as MONAI's UNet: (B, C, x, y, z) -> (B, out, x, y, z); several output channels work.
    from monai.networks.nets import UNet

    x = torch.randn(2, 3, 16, 16, 16)
    tiny = TinyUNet(3, 2, features=(4, 8))
    monai_net = UNet(spatial_dims=3, in_channels=3, out_channels=2, channels=(4, 8), strides=(2,))
    assert tiny(x).shape == monai_net(x).shape == (2, 2, 16, 16, 16)


def test_unknown_name_and_bad_options():
    with pytest.raises(MSToolkitInputError, match="Unknown model 'vnet'; allowed: tiny_unet"):
        build_model("vnet", in_channels=2)
    with pytest.raises(MSToolkitInputError, match="'in_channels' must be a positive integer"):
        build_model("tiny_unet", in_channels=0)
    with pytest.raises(MSToolkitInputError, match=r"'dropout' must be in \[0, 1\)"):
        build_model("tiny_unet", in_channels=1, dropout=1.5)


def test_dropout_layers_present_only_when_asked():
    with_dropout = build_model("tiny_unet", in_channels=1, dropout=0.2)
    without = build_model("tiny_unet", in_channels=1)
    assert any(isinstance(m, nn.Dropout3d) for m in with_dropout.modules())
    assert not any(isinstance(m, nn.Dropout3d) for m in without.modules())


def test_count_parameters_hand_computed():
    assert count_parameters(nn.Conv3d(2, 4, kernel_size=3)) == 4 * 2 * 27 + 4
    layer = nn.Linear(3, 2)
    layer.weight.requires_grad_(False)
    assert count_parameters(layer) == 2
    assert count_parameters(layer, trainable_only=False) == 8


def test_receptive_field_hand_computed():
    stack = nn.Sequential(*[nn.Conv3d(1, 1, 3, padding=1) for _ in range(3)])  # 1 + 3·2 = 7
    assert receptive_field(stack, size=21) == (7, 7, 7)
    dilated = nn.Sequential(nn.Conv3d(1, 1, 3, padding=2, dilation=2))  # taps 2 voxels apart: 5
    assert receptive_field(dilated, size=11) == (5, 5, 5)


def test_receptive_field_grows_with_depth():
    shallow = receptive_field(TinyUNet(1, features=(2, 4)), size=48)
    deep = receptive_field(TinyUNet(1, features=(2, 4, 8)), size=48)
    assert shallow[0] < deep[0]


def test_model_in_channels():
    assert model_in_channels(build_model("tiny_unet", in_channels=3)) == 3
    assert model_in_channels(build_model("unet", in_channels=2, features=(4, 8))) == 2
    assert model_in_channels(nn.Sequential(nn.Conv3d(5, 1, 1))) == 5


def test_save_load_roundtrip(tmp_path):
    model = build_model("tiny_unet", in_channels=2, features=(4, 8), dropout=0.1)
    config = {"name": "tiny_unet", "features": [4, 8], "dropout": 0.1, "sequences": ["FLAIR", "T1"]}
    path = save_model(tmp_path / "m.pt", model, config)
    loaded, loaded_config = load_model(path)
    assert loaded_config["sequences"] == ["FLAIR", "T1"]
    x = torch.randn(1, 2, 9, 8, 7)
    model.eval()
    torch.testing.assert_close(model(x), loaded(x))
    assert not loaded.training
    # notebook_model prefers notebook 03's checkpoint in OUTPUT_DIR
    (tmp_path / NOTEBOOK_CHECKPOINT).parent.mkdir(parents=True)
    save_model(tmp_path / NOTEBOOK_CHECKPOINT, model, config)
    nb_model, nb_config = notebook_model(tmp_path)
    torch.testing.assert_close(model(x), nb_model(x))


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model checkpoint"):
        load_model(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(MSToolkitInputError, match="not an mstoolkit checkpoint"):
        load_model(tmp_path / "other.pt")
    torch.save({"model": {}, "config": {"sequences": ["FLAIR"]}}, tmp_path / "noname.pt")
    with pytest.raises(MSToolkitInputError, match="no 'name' entry"):
        load_model(tmp_path / "noname.pt")


@pytest.mark.skipif(not (REFERENCE_DIR / "config.json").exists(), reason="reference model not built")
def test_reference_model_loads_and_is_small():
    model, config = load_model("reference")
    assert config["sequences"] == ["FLAIR", "T1"] and config["name"] in MODEL_NAMES
    assert "normalisation" in config
    weights = REFERENCE_DIR / config["weights"]
    assert weights.stat().st_size < 20 * 2**20
    assert json.loads((REFERENCE_DIR / "config.json").read_text())["version"]
    with torch.no_grad():
        assert model(torch.zeros(1, 2, 9, 8, 7)).shape == (1, 1, 9, 8, 7)


def test_both_shipped_models_load_by_name_and_differ():
    from mstoolkit.segmentation.models import SHIPPED_MODELS

    v1, v1_config = load_model("reference")
    v2, v2_config = load_model("reference-v2")
    assert (SHIPPED_MODELS["reference-v2"] / "model.pt").stat().st_size < 20 * 2**20
    assert v2_config["sequences"] == ["FLAIR", "T1"] and "patient26" in v2_config["training_data"]
    from mstoolkit.segmentation.config import REFERENCE_V2_TITLE

    assert v2_config["title"] == REFERENCE_V2_TITLE  # what mstoolkit train --preset reference_v2 writes
    assert "patient26" not in v1_config["training_data"]  # the default stays the phantom-only model
    assert v2_config["trained"]["train_config"]["ema_decay"] == v1_config["trained"]["train_config"]["ema_decay"]
    inputs = torch.randn(1, 2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(v1(inputs), v2(inputs))
