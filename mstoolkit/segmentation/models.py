"""Segmentation networks: a from-scratch 3D U-Net and MONAI's, behind one factory.

* ``"tiny_unet"`` — :class:`TinyUNet`, a small 3D U-Net written out in one screen
  (encoder, bottleneck, decoder, skip connections) so a student can read it.
* ``"unet"``, ``"attention_unet"``, ``"swin_unetr"`` — MONAI's implementations.

Every model maps a ``(batch, channels, x, y, z)`` tensor to lesion **logits** of
shape ``(batch, out_channels, x, y, z)``; apply ``torch.sigmoid`` for a
probability. Any spatial size works: inputs are padded to the size the network
needs and the output is cropped back.

Also here: :func:`count_parameters`, :func:`receptive_field`, and loading
trained models (:func:`load_model`, :func:`notebook_model`, :func:`save_model`).

Introduced in notebook 03 (U-Net training).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mstoolkit.data.io import MSToolkitInputError, write_atomic
from mstoolkit.runtime import pick_device, release_memory

__all__ = [
    "MODEL_NAMES",
    "REFERENCE_DIR",
    "TinyUNet",
    "double_conv",
    "build_model",
    "count_parameters",
    "receptive_field",
    "model_in_channels",
    "save_model",
    "load_model",
    "export_reference",
    "notebook_model",
    "NOTEBOOK_CHECKPOINT",
]

#: Names accepted by :func:`build_model`.
MODEL_NAMES = ("tiny_unet", "unet", "attention_unet", "swin_unetr")
#: Folder of the reference model shipped with the package (weights + config JSON).
REFERENCE_DIR = Path(__file__).parent / "reference"
#: The models shipped with the package, by the name ``load_model`` and ``mstoolkit segment --model`` take.
#: ``reference`` (phantom only) is the default and the one notebooks 04-06 explain; ``reference-v2`` also
#: learnt from the real sample patient26, so patient26 is training data for it (MODEL_CARD.md).
SHIPPED_MODELS = {"reference": REFERENCE_DIR, "reference-v2": Path(__file__).parent / "reference_v2"}
#: Where notebook 03 saves its best model inside OUTPUT_DIR.
NOTEBOOK_CHECKPOINT = Path("03_unet_training") / "best.pt"


# --------------------------------------------------------------------------- networks


def _conv_block(in_ch: int, out_ch: int, dropout: float) -> nn.Sequential:
    """Two 3×3×3 convolutions, each followed by instance norm and a leaky ReLU."""
    layers: list[nn.Module] = []
    for i in range(2):
        layers += [
            nn.Conv3d(in_ch if i == 0 else out_ch, out_ch, kernel_size=3, padding=1),
            nn.InstanceNorm3d(out_ch, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        ]
    if dropout > 0:
        layers.append(nn.Dropout3d(dropout))  # kept in eval for MC dropout by mstoolkit.uncertainty.sampling
    return nn.Sequential(*layers)


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """TinyUNet's building block without dropout: two (Conv3d 3×3×3, InstanceNorm3d, LeakyReLU) rounds.

    Notebook 03's first exercise asks students to write it; its check falls back on this one.

    >>> tuple(double_conv(2, 4)(torch.zeros(1, 2, 5, 6, 7)).shape)
    (1, 4, 5, 6, 7)
    """
    return _conv_block(in_channels, out_channels, 0.0)


class TinyUNet(nn.Module):
    """A small 3D U-Net, readable in one screen.

    The encoder halves the image size and doubles the feature channels at each
    level; the decoder upsamples back and concatenates the encoder's features
    of the same size (the *skip connections* that keep fine detail).

    Parameters
    ----------
    in_channels : int
        Number of input sequences (2 for FLAIR + T1).
    out_channels : int
        1 for a binary lesion mask (logits).
    features : tuple of int
        Channels at each level; ``len(features) - 1`` down-sampling steps.
    dropout : float
        Dropout after each block (``Dropout3d``); > 0 allows MC dropout.
    """

    def __init__(self, in_channels: int, out_channels: int = 1, *, features: tuple[int, ...] = (8, 16, 32, 64), dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.features = in_channels, out_channels, tuple(features)
        self.encoders = nn.ModuleList()
        channels = in_channels
        for f in features[:-1]:
            self.encoders.append(_conv_block(channels, f, dropout))
            channels = f
        self.bottleneck = _conv_block(channels, features[-1], dropout)
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for f_skip, f_below in zip(reversed(features[:-1]), reversed(features[1:])):
            self.upsamples.append(nn.ConvTranspose3d(f_below, f_skip, kernel_size=2, stride=2))
            self.decoders.append(_conv_block(2 * f_skip, f_skip, dropout))
        self.pool = nn.MaxPool3d(2)
        self.head = nn.Conv3d(features[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        x = _pad_to_multiple(x, 2 ** (len(self.features) - 1))
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)  # remembered for the decoder
            x = self.pool(x)
        x = self.bottleneck(x)
        for upsample, decoder, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
        # The 1×1 output layer in float32 even under bfloat16 autocast: bfloat16 logits (3 significant digits)
        # move voxels across the threshold, float32 ones keep the mask (inference.predict, precision="bfloat16").
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x.float())[..., : size[0], : size[1], : size[2]]


def _pad_to_multiple(x: torch.Tensor, multiple: int, minimum: int = 0) -> torch.Tensor:
    """Zero-pad the last three axes at their end up to a multiple of ``multiple`` (and at least ``minimum``)."""
    pads: list[int] = []
    for n in reversed(x.shape[2:]):
        target = max(n + (-n) % multiple, minimum)
        pads += [0, target - n]
    return F.pad(x, pads) if any(pads) else x


class _Padded(nn.Module):
    """Pad the input for a network that needs sizes divisible by ``multiple``; crop its output."""

    def __init__(self, net: nn.Module, multiple: int, in_channels: int, minimum: int = 0) -> None:
        super().__init__()
        self.net, self.multiple, self.minimum, self.in_channels = net, multiple, minimum, in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        return self.net(_pad_to_multiple(x, self.multiple, self.minimum))[..., : size[0], : size[1], : size[2]]


def build_model(
    name: str,
    *,
    in_channels: int,
    out_channels: int = 1,
    dropout: float = 0.0,
    features: tuple[int, ...] | None = None,
) -> nn.Module:
    """Build a 3D segmentation network by name.

    Parameters
    ----------
    name : {"tiny_unet", "unet", "attention_unet", "swin_unetr"}
    in_channels : int, keyword-only
        Number of input sequences (e.g. 2 for ``("FLAIR", "T1")``).
    out_channels : int, keyword-only
        Output channels (logits); 1 for binary lesion segmentation.
    dropout : float, keyword-only
        Dropout probability (needed for MC dropout in notebook 06).
    features : tuple of int, optional
        Channels per level (the first is SwinUNETR's ``feature_size``);
        defaults: (8, 16, 32, 64) tiny, (16, 32, 64, 128, 256) MONAI U-Nets, 24 Swin.

    Returns
    -------
    torch.nn.Module
        Maps (batch, in_channels, x, y, z) to logits (batch, out_channels, x, y, z).

    Introduced in notebook 03.

    >>> model = build_model("tiny_unet", in_channels=2)
    >>> tuple(model(torch.zeros(1, 2, 9, 8, 7)).shape)
    (1, 1, 9, 8, 7)
    """
    if name not in MODEL_NAMES:
        raise MSToolkitInputError(f"Unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)}.")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise MSToolkitInputError(f"'in_channels' must be a positive integer, got {in_channels!r}.")
    if not 0.0 <= dropout < 1.0:
        raise MSToolkitInputError(f"'dropout' must be in [0, 1), got {dropout!r}.")
    if name == "tiny_unet":
        return TinyUNet(in_channels, out_channels, features=tuple(features or (8, 16, 32, 64)), dropout=dropout)
    from monai.networks import nets

    if name == "swin_unetr":
        feature_size = int(features[0]) if features else 24
        net = nets.SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size,
                             drop_rate=dropout, spatial_dims=3)
        return _Padded(net, 32, in_channels, minimum=64)  # its deepest level must keep > 1 voxel
    channels = tuple(features or (16, 32, 64, 128, 256))
    strides = (2,) * (len(channels) - 1)
    if name == "unet":
        net = nets.UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=channels,
                        strides=strides, num_res_units=2, dropout=dropout)
    else:
        net = nets.AttentionUnet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                                 channels=channels, strides=strides, dropout=dropout)
    return _Padded(net, 2 ** len(strides), in_channels)


# --------------------------------------------------------------------------- helpers


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a model.

    >>> count_parameters(nn.Conv3d(2, 4, kernel_size=3))  # 4·2·27 weights + 4 biases
    220
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_in_channels(model: nn.Module) -> int:
    """Number of input channels a model expects (from its first convolution)."""
    channels = getattr(model, "in_channels", None)
    if channels is None and hasattr(model, "module"):  # DistributedDataParallel
        return model_in_channels(model.module)
    if channels is None:
        first = next((m for m in model.modules() if isinstance(m, (nn.Conv3d, nn.Conv2d))), None)
        if first is None:
            raise MSToolkitInputError("Cannot tell how many input channels this model expects (no convolution found).")
        channels = first.in_channels
    return int(channels)


def receptive_field(model: nn.Module, *, size: int = 96) -> tuple[int, int, int]:
    """Theoretical receptive field (voxels per axis) of the centre output voxel.

    Measured, not derived: on a copy of the model with normalisation and dropout
    removed, max-pooling replaced by average pooling and all weights made
    positive, the gradient of the centre output with respect to the input is
    non-zero exactly on the voxels that can influence it. The answer is capped
    at ``size`` (the probe cube's edge).

    >>> receptive_field(nn.Sequential(nn.Conv3d(1, 1, 3, padding=1), nn.Conv3d(1, 1, 3, padding=1)), size=15)
    (5, 5, 5)
    """
    probe = copy.deepcopy(model).float().cpu().eval()

    def simplify(module: nn.Module) -> None:
        for child_name, child in module.named_children():
            if isinstance(child, (nn.InstanceNorm3d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.Dropout, nn.Dropout3d)):
                setattr(module, child_name, nn.Identity())
            elif isinstance(child, nn.MaxPool3d):
                setattr(module, child_name, nn.AvgPool3d(child.kernel_size, child.stride, child.padding))
            else:
                simplify(child)

    simplify(probe)
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(p.abs() + 1e-3)
    x = torch.rand(1, model_in_channels(model), size, size, size, requires_grad=True)
    out = probe(x)
    centre = size // 2
    out[0, 0, centre, centre, centre].backward()
    influence = x.grad[0].abs().sum(0) > 0
    extents = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = influence.any(dim=other[1]).any(dim=other[0]).nonzero()
        extents.append(int(hit.max() - hit.min() + 1) if len(hit) else 0)
    del probe, x, out, influence
    release_memory()  # the probe's activations and gradients: a few hundred MB at size 96
    return tuple(extents)  # type: ignore[return-value]


# --------------------------------------------------------------------------- saving and loading


def save_model(path: str | os.PathLike, model: nn.Module, config: dict[str, Any]) -> Path:
    """Save a model's weights and its config in one checkpoint (atomically).

    ``config`` must hold what :func:`load_model` needs to rebuild the network:
    ``"name"`` (a :data:`MODEL_NAMES` entry), ``"sequences"``, and optionally
    ``"features"``, ``"dropout"``, ``"normalisation"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = model.module if hasattr(model, "module") else model
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    checkpoint = {"model": state, "config": json.loads(json.dumps(config))}
    return write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))


def _build_from_config(config: dict[str, Any]) -> nn.Module:
    for key in ("name", "sequences"):
        if key not in config:
            raise MSToolkitInputError(f"The model config has no {key!r} entry; it was not saved by mstoolkit.")
    features = config.get("features")
    return build_model(config["name"], in_channels=len(config["sequences"]), out_channels=int(config.get("out_channels", 1)),
                       dropout=float(config.get("dropout", 0.0)), features=tuple(features) if features else None)


def _read_checkpoint(path: Path, hint: str) -> Any:
    """``torch.load`` of weights only, with a one-line error for a file that is not a PyTorch checkpoint."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the weights-only unpickler raises many kinds (KeyError, UnpicklingError, ...)
        # on a file that is not a checkpoint; whatever the kind, the fix is the same
        raise MSToolkitInputError(f"'{path}' is not a PyTorch checkpoint (or it is truncated or corrupt); {hint}.") from None


def load_model(source: str | os.PathLike = "reference", *, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a trained model and its config, ready for inference (eval mode).

    Parameters
    ----------
    source : "reference", "reference-v2" or path
        ``"reference"`` loads the model shipped in the package (trained on the
        phantom only; see MODEL_CARD.md), ``"reference-v2"`` the one that also learnt from
        patient26 (:data:`SHIPPED_MODELS`). Otherwise a checkpoint written by
        :func:`save_model` or by ``mstoolkit train`` (``best.pt``/``last.pt``),
        a folder holding ``best.pt``, or a folder written by :func:`export_reference`
        (``model.pt`` + ``config.json``).
    device : str, keyword-only
        ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.

    Returns
    -------
    model : torch.nn.Module
    config : dict
        Holds ``"name"``, ``"sequences"``, ``"normalisation"``, ``"threshold"`` and training details.
        The model's ``threshold`` and ``min_lesion_mm3`` attributes hold ``config["threshold"]``
        (default 0.5) and ``config["min_lesion_mm3"]`` (default 0: keep every component).

    Introduced in notebook 03; notebooks 04–06 load the reference model with it.
    """
    device = pick_device(device, verbose=False)
    shipped = str(source) in SHIPPED_MODELS
    exported = SHIPPED_MODELS[str(source)] if shipped else Path(source)
    hint = "reinstall mstoolkit" if shipped else "pass 'reference' or a best.pt written by `mstoolkit train`"
    if shipped or (exported / "config.json").is_file():  # the shipped model, or a folder written by export_reference
        try:
            config = json.loads((exported / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MSToolkitInputError(f"'{exported / 'config.json'}' is not a readable model config ({err}); {hint}.") from None
        weights = exported / config.get("weights", "model.pt")
        if not weights.exists():
            raise FileNotFoundError(f"The model weights '{weights}' are missing; "
                                    f"{'reinstall mstoolkit' if shipped else 'export the model again'}.")
        state = _read_checkpoint(weights, hint)
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "best.pt"
        if not path.exists():
            raise FileNotFoundError(f"No model checkpoint at '{path}'. Pass 'reference' or a .pt file written by `mstoolkit train`.")
        checkpoint = _read_checkpoint(path, hint)
        if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
            raise MSToolkitInputError(f"'{path}' is not an mstoolkit checkpoint (expected the keys 'model' and 'config'); {hint}.")
        state, config = checkpoint["model"], dict(checkpoint["config"])
    model = _build_from_config(config)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:  # weights of another architecture, or not weights at all
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MSToolkitInputError(f"The weights in '{source}' do not fit the model its config describes ({first_line}); "
                                  f"{hint}.") from None
    # the cut-off and smallest lesion kept, chosen on validation data; predict() uses them
    model.threshold = float(config.get("threshold", 0.5))
    model.min_lesion_mm3 = float(config.get("min_lesion_mm3", 0.0))
    return model.to(device).eval(), config


def notebook_model(output_dir: str | os.PathLike, *, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Notebook 03's best model from ``output_dir`` if it is there, else the reference model.

    Notebooks 04–06 call this so each runs on its own.
    """
    checkpoint = Path(output_dir) / NOTEBOOK_CHECKPOINT
    if checkpoint.exists():
        return load_model(checkpoint, device=device)
    return load_model("reference", device=device)


def export_reference(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Write a checkpoint as a shipped model: ``model.pt`` (weights only) and ``config.json``."""
    from mstoolkit import __version__

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {**state["config"], "weights": "model.pt", "version": __version__, **(extra or {})}
    write_atomic(out_dir / "model.pt", lambda tmp: torch.save(state["model"], tmp))
    write_atomic(out_dir / "config.json", json.dumps(config, indent=2, default=str))
    return out_dir
