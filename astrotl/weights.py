"""Finding and safely loading pretrained weights, offline first.

Weights are data with provenance: every load returns the state dict together with a record of
where it came from and its sha256, which the run writes into its outputs.

Safety: ``.safetensors`` files load with safetensors; anything else goes through
``torch.load(weights_only=True)``, which refuses pickles that would run arbitrary code.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import WeightsError
from .io import sha256_file

log = logging.getLogger(__name__)

#: torchvision ImageNet checkpoints: file name in the torch hub cache and the download URL.
#: The 8 hex digits in each name are the start of the file's sha256 (torchvision's convention).
TORCHVISION_IMAGENET = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg19_bn": "https://download.pytorch.org/models/vgg19_bn-c79401a0.pth",
}


def weights_search_dirs() -> list[Path]:
    """Directories searched for weight files, in order: ``$ASTROTL_WEIGHTS_DIR``, the torch hub cache."""
    dirs = []
    if os.environ.get("ASTROTL_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["ASTROTL_WEIGHTS_DIR"]).expanduser())
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def find_imagenet_file(arch: str) -> tuple[Path | None, str, list[Path]]:
    """Look for the torchvision ImageNet checkpoint of ``arch`` locally.

    Returns ``(path or None, expected file name, directories searched)``.
    """
    url = TORCHVISION_IMAGENET.get(arch)
    if url is None:
        raise WeightsError(f"no ImageNet weights are known for '{arch}'; known: {', '.join(sorted(TORCHVISION_IMAGENET))}")
    fname = url.rsplit("/", 1)[1]
    dirs = weights_search_dirs()
    for d in dirs:
        if (d / fname).is_file():
            return d / fname, fname, dirs
    return None, fname, dirs


def imagenet_missing_message(arch: str, fname: str, dirs: list[Path]) -> str:
    url = TORCHVISION_IMAGENET[arch]
    where = " or ".join(str(d) for d in dirs)
    return (f"ImageNet weights for {arch} not found offline: expected '{fname}' in {where}; "
            f"on a machine with internet download {url} and copy it there (or set ASTROTL_WEIGHTS_DIR), "
            f"or use weights: auto (random if absent), none, or a file path")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a ``torch.save`` file, safely.

    A Lightning checkpoint (a dict with ``state_dict``) or a dict with ``model``/``state_dict``
    keys is unwrapped.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"weights file '{p}' does not exist; give an existing .safetensors/.pt/.pth/.ckpt path, or weights: auto|none|imagenet")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"weights file '{p}' is not a valid safetensors file ({exc}); re-export or re-download it") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch raises several types; the message matters
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise WeightsError(
                f"refusing to load '{p}': it is a pickle that needs arbitrary code to load (unsafe, "
                f"torch.load(weights_only=True) rejected it); convert it to a plain state dict or "
                f"safetensors on a machine you trust: torch.save(model.state_dict(), 'weights.pt')") from None
        raise WeightsError(f"weights file '{p}' cannot be read ({text.splitlines()[0] if text else type(exc).__name__}); "
                           f"it may be truncated or not a PyTorch file") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file '{p}' does not hold a state dict of tensors; save model.state_dict() instead")
    return obj


def strip_prefixes(state: dict[str, torch.Tensor], prefixes=("module.", "model.", "net.", "backbone.net.", "backbone.")) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (DDP ``module.``, Lightning ``model.``, astrotl ``backbone.net.``)."""
    out = dict(state)
    changed = True
    while changed:
        changed = False
        for pre in sorted(prefixes, key=len, reverse=True):
            if out and all(k.startswith(pre) for k in out):
                out = {k[len(pre):]: v for k, v in out.items()}
                changed = True
                break
        if not changed and out:
            # Lightning module: keys like "model.0.net.conv1.weight" -> keep the backbone part
            for marker in ("0.net.", "backbone.net."):
                sub = {k.split(marker, 1)[1]: v for k, v in out.items() if marker in k}
                if sub and len(sub) >= len(out) // 4:
                    out = sub
                    changed = True
                    break
    return out


def adapt_first_conv(weight: torch.Tensor, in_chans: int, mode: str = "repeat",
                     bands: tuple[str, ...] | None = None, rgb_bands: list[str] | None = None) -> torch.Tensor:
    """Turn an RGB first-convolution kernel ``[out, 3, k, k]`` into ``[out, in_chans, k, k]``.

    ``repeat``: cycle the R, G, B kernels over the input bands and rescale by ``3 / in_chans`` so
    that the response to a flat image keeps its scale (timm's approach).
    ``map``: band ``rgb_bands[i]`` gets the kernel of RGB channel ``i``; other bands get zero
    weights (they can learn during fine-tuning), so the pretrained response is kept exactly.
    """
    if weight.shape[1] == in_chans:
        return weight
    if weight.shape[1] != 3:
        raise WeightsError(f"cannot adapt a first convolution with {weight.shape[1]} input channels to {in_chans}; "
                           f"only RGB (3-channel) weights can be adapted")
    out_c, _, kh, kw = weight.shape
    if mode == "repeat":
        reps = -(-in_chans // 3)
        new = weight.repeat(1, reps, 1, 1)[:, :in_chans] * (3.0 / in_chans)
        return new.contiguous()
    if mode == "map":
        if not rgb_bands or len(rgb_bands) != 3 or bands is None:
            raise WeightsError("input_adapter: map needs rgb_bands: [band for R, band for G, band for B]")
        missing = [b for b in rgb_bands if b not in bands]
        if missing:
            raise WeightsError(f"rgb_bands {missing} are not among the data's bands {list(bands)}; pick three of those")
        new = torch.zeros(out_c, in_chans, kh, kw, dtype=weight.dtype)
        for rgb_i, band in enumerate(rgb_bands):
            new[:, bands.index(band)] = weight[:, rgb_i]
        return new
    raise WeightsError(f"unknown input_adapter '{mode}'; use repeat or map")


def load_into(module: nn.Module, state: dict[str, torch.Tensor], *, source: str, skip_prefixes: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load ``state`` into ``module`` (shapes must match except skipped keys); report what happened."""
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in skip_prefixes)}
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and own[k].shape != state[k].shape]
    if mismatched:
        k = mismatched[0]
        raise WeightsError(f"weights from {source} do not fit this backbone: '{k}' has shape {tuple(state[k].shape)}, "
                           f"the model expects {tuple(own[k].shape)}; check the backbone name and input bands")
    missing = [k for k in own if k not in state and not any(k.startswith(p) for p in skip_prefixes)]
    loaded = len(state) - len(unexpected)
    if loaded == 0 or len(missing) > len(own) // 2:
        raise WeightsError(f"weights from {source} do not match this backbone ({loaded} of {len(own)} tensors match, "
                           f"e.g. missing '{missing[0] if missing else '?'}'); check the backbone name")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {"loaded_tensors": loaded, "missing": missing[:10], "unexpected": unexpected[:10]}


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path).expanduser().resolve()
    return {"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}
