"""Finding and safely loading pretrained weights, offline first.

Weights are data with provenance: every load returns the state dict together with a record of
where it came from, its sha256 and its metadata (bands, normalisation, licence), which the run
writes into its outputs (``run.json``, ``metrics.json``, ``report.md``).

Resolution order for a backbone's ``weights:`` value
------------------------------------------------------

1. an explicit path (``weights: /data/my_backbone.safetensors``) or an astrotl run
   (``weights: run:runs/gz1_pretrain`` -> ``runs/gz1_pretrain/backbone.safetensors``);
2. the weights directory: ``$ASTROTL_WEIGHTS_DIR``, else ``<astrotl cache>/weights``
   (``astrotl weights import FILE`` puts files there, each with a ``<file>.json`` sidecar of
   metadata); a bare file name (``weights: gz1-resnet18``) is looked up there;
3. the local torch hub cache (``$TORCH_HOME/hub/checkpoints``) and the Hugging Face cache
   (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, with its ``models--org--name/snapshots/<rev>/``
   layout);
4. a download, only when the network is allowed (``ASTROTL_ALLOW_DOWNLOAD=1`` and
   ``HF_HUB_OFFLINE`` unset);
5. otherwise one :class:`~astrotl.errors.WeightsError` naming the file expected, where it was looked
   for, and how to provide it.

Safety: ``.safetensors`` files load with safetensors; anything else goes through
``torch.load(weights_only=True)``, which refuses pickles that would run arbitrary code.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import WeightsError
from .io import sha256_file

log = logging.getLogger(__name__)

ENV_WEIGHTS_DIR = "ASTROTL_WEIGHTS_DIR"
ENV_ALLOW_DOWNLOAD = "ASTROTL_ALLOW_DOWNLOAD"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
SIDECAR_SUFFIX = ".json"
RUN_BACKBONE_FILE = "backbone.safetensors"

IMAGENET_NORMALISATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "space": "RGB, 0-1"}

#: torchvision ImageNet checkpoints of the built-in backbones (kept for reference and for
#: callers of :func:`find_imagenet_file`; other architectures are looked up in torchvision).
TORCHVISION_IMAGENET = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg19_bn": "https://download.pytorch.org/models/vgg19_bn-c79401a0.pth",
}


# -- where to look ---------------------------------------------------------------------------


def weights_dir() -> Path:
    """The weights directory: ``$ASTROTL_WEIGHTS_DIR``, else ``<astrotl cache dir>/weights``."""
    if os.environ.get(ENV_WEIGHTS_DIR):
        return Path(os.environ[ENV_WEIGHTS_DIR]).expanduser()
    if os.environ.get("ASTROTL_CACHE_DIR"):  # same rule as astrotl.engine.default_cache_dir
        return Path(os.environ["ASTROTL_CACHE_DIR"]).expanduser() / "weights"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "astrotl" / "weights"


def torch_hub_dir() -> Path:
    """torch's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where torchvision keeps downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def weights_search_dirs() -> list[Path]:
    """Directories searched for weight files by name, in order: the weights directory, the torch hub cache."""
    return [weights_dir(), torch_hub_dir()]


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def download_allowed() -> bool:
    """True only if ``ASTROTL_ALLOW_DOWNLOAD=1`` and ``HF_HUB_OFFLINE`` is not set."""
    return _truthy(os.environ.get(ENV_ALLOW_DOWNLOAD)) and not _truthy(os.environ.get("HF_HUB_OFFLINE"))


def hf_repo_folder(repo_id: str) -> str:
    """``org/name`` -> ``models--org--name`` (the Hugging Face cache's folder name)."""
    return "models--" + repo_id.replace("/", "--")


def hf_flat_name(repo_id: str) -> str:
    """File name of a hub repo's weights in the weights directory: ``org--name.safetensors``."""
    return repo_id.replace("/", "--") + ".safetensors"


def find_in_hf_cache(repo_id: str, filename: str, cache_dir: Path | None = None) -> Path | None:
    """Path of ``filename`` of ``repo_id`` in the local Hugging Face cache, or ``None``.

    Uses ``huggingface_hub.try_to_load_from_cache`` (which follows ``refs/main``); if the cache
    was copied without its ``refs`` the newest ``snapshots/<rev>/filename`` is used.
    """
    cache = Path(cache_dir) if cache_dir else hf_cache_dir()
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache))
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    except ImportError:  # pragma: no cover -- timm depends on huggingface_hub
        pass
    snaps = cache / hf_repo_folder(repo_id) / "snapshots"
    found = sorted(snaps.glob(f"*/{filename}"), key=lambda p: p.stat().st_mtime, reverse=True) if snaps.is_dir() else []
    return found[0] if found else None


# -- what to look for ------------------------------------------------------------------------


@dataclass
class WeightsRequest:
    """Pretrained weights to find: by file name, on the torch hub (URL) and/or the Hugging Face hub.

    Attributes
    ----------
    what : str
        Human description for messages, e.g. ``"ImageNet weights for resnet18 (torchvision IMAGENET1K_V1)"``.
    filename : str
        File name expected in the weights directory (and the torch hub cache when ``url`` is set).
    source : str
        Value recorded as ``weights_info["source"]`` (``imagenet``, ``zoobot``, ``hf-hub``, ...).
    url : str or None
        Direct download URL (torchvision, older timm weights).
    hf_repo : str or None
        Hugging Face hub repo id, e.g. ``mwalmsley/zoobot-encoder-convnext_nano``.
    hf_files : tuple of str
        Candidate weight files in the hub repo, in order of preference.
    sha256_prefix : str or None
        Expected start of the file's sha256 (torchvision's ``name-<hash8>.pth`` convention).
    meta : dict
        Metadata known in advance (normalisation, licence, ...).
    """

    what: str
    filename: str
    source: str
    url: str | None = None
    hf_repo: str | None = None
    hf_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    sha256_prefix: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: Name for ``astrotl weights import FILE --for KEY`` (``resnet18``, ``timm:<model>``, ``zoobot:<name>``).
    key: str | None = None

    def searched(self) -> list[str]:
        places = [str(weights_dir() / self.filename)]
        if self.url:
            places.append(str(torch_hub_dir() / self.url.rsplit("/", 1)[1]))
        if self.hf_repo:
            places.append(str(hf_cache_dir() / hf_repo_folder(self.hf_repo) / "snapshots" / "<rev>" / self.hf_files[0]))
        return places

    def missing_message(self) -> str:
        where = ", ".join(self.searched())
        how = []
        if self.url:
            how.append(f"download {self.url}")
        if self.hf_repo:
            how.append(f"download https://huggingface.co/{self.hf_repo} (e.g. `huggingface-cli download {self.hf_repo}`, "
                       f"then copy the cache folder {hf_repo_folder(self.hf_repo)})")
        get = " or ".join(how) or "obtain the file"
        same = self.filename == (self.url or "").rsplit("/", 1)[-1]
        imp = f"astrotl weights import {self.filename}" if same else f"astrotl weights import FILE --for {self.key or '<backbone>'}"
        return (f"{self.what} not found offline: expected '{self.filename}'; looked in {where}; "
                f"on a machine with internet {get}, carry it over and run `{imp}` "
                f"(or copy it into ${ENV_WEIGHTS_DIR}), or set {ENV_ALLOW_DOWNLOAD}=1 where downloads are allowed, "
                f"or use weights: none / auto")


def locate(req: WeightsRequest, *, allow_download: bool | None = None) -> Path | None:
    """Find ``req`` locally (weights dir, torch hub cache, Hugging Face cache), else download if allowed."""
    candidates = [weights_dir() / req.filename]
    if req.url:
        candidates.append(torch_hub_dir() / req.url.rsplit("/", 1)[1])
    for c in candidates:
        if c.is_file():
            return c
    if req.hf_repo:
        for fname in req.hf_files:
            hit = find_in_hf_cache(req.hf_repo, fname)
            if hit is not None:
                return hit
    if allow_download is None:
        allow_download = download_allowed()
    if not allow_download:
        return None
    if req.hf_repo:
        from huggingface_hub import hf_hub_download

        last: Exception | None = None
        for fname in req.hf_files:
            try:
                hf_hub_download(req.hf_repo, "config.json", cache_dir=str(hf_cache_dir()))
            except Exception:  # noqa: BLE001 -- config is optional
                pass
            try:
                return Path(hf_hub_download(req.hf_repo, fname, cache_dir=str(hf_cache_dir())))
            except Exception as exc:  # noqa: BLE001 -- try the next candidate file
                last = exc
        if not req.url:
            raise WeightsError(f"downloading {req.what} from https://huggingface.co/{req.hf_repo} failed ({last}); "
                               f"check the network or provide the file offline") from None
    if req.url:
        dest = torch_hub_dir() / req.url.rsplit("/", 1)[1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s from %s", req.what, req.url)
        try:
            torch.hub.download_url_to_file(req.url, str(dest), hash_prefix=req.sha256_prefix, progress=False)
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(f"downloading {req.what} from {req.url} failed ({exc}); check the network or "
                               f"provide the file offline") from None
        return dest
    return None


# -- metadata --------------------------------------------------------------------------------


def sidecar_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a weights file: safetensors header metadata, a ``<file>.json`` sidecar, and for
    a Hugging Face snapshot its ``config.json`` (normalisation) and model-card licence."""
    p = Path(path)
    meta: dict[str, Any] = {}
    if p.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                meta.update({k: _decode(v) for k, v in (f.metadata() or {}).items()})
        except Exception:  # noqa: BLE001 -- a broken file is reported when it is loaded
            pass
    cfg = p.parent / "config.json"
    if "snapshots" in p.parts and cfg.is_file():
        try:
            hf = json.loads(cfg.read_text())
            meta["hf_config"] = hf
            pc = hf.get("pretrained_cfg", hf)
            if "mean" in pc and "std" in pc:
                meta.setdefault("normalisation", {"mean": pc["mean"], "std": pc["std"], "space": "RGB, 0-1"})
            if pc.get("license"):
                meta.setdefault("licence", pc["license"])
        except (OSError, ValueError):
            pass
        card = p.parent / "README.md"
        if card.is_file() and "licence" not in meta:
            for line in card.read_text(errors="replace").splitlines()[:30]:
                if line.startswith("license:"):
                    meta["licence"] = line.split(":", 1)[1].strip()
                    break
    side = sidecar_path(p)
    if side.is_file():
        try:
            meta.update(json.loads(side.read_text()))
        except (OSError, ValueError) as exc:
            raise WeightsError(f"metadata sidecar '{side}' is not valid JSON ({exc}); fix or delete it") from None
    return meta


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """``path``, ``sha256`` and ``bytes`` of a file."""
    p = Path(path).expanduser().resolve()
    return {"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}


# -- safe loading ----------------------------------------------------------------------------


def _safe_globals() -> list[Any]:
    """Plain-data classes Lightning puts into checkpoints (hyper-parameter dicts): safe to allow."""
    out: list[Any] = []
    for mod, name in (("lightning.fabric.utilities.data", "AttributeDict"),
                      ("lightning_fabric.utilities.data", "AttributeDict"),
                      ("pytorch_lightning.utilities.parsing", "AttributeDict")):
        try:
            out.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return out


#: What torch's weights-only unpickler says when a pickle would need code to load (an import of a
#: global, a call, an object built from a class): refused, never "damaged".
_CODE_PATTERNS = (
    (re.compile(r"GLOBAL (\S+) was not an allowed global"), "it imports and calls {0}"),
    (re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked"), "it imports and calls {0}"),
    (re.compile(r"Trying to call reduce for unrecognized function (\S+)"), "it calls {0}"),
    (re.compile(r"Can only create new object for .* but got (.+?)(?:\.|$)"), "it builds an object of {0}"),
    (re.compile(r"Can only build .* but got (.+?)(?:\.|$)"), "it builds an object of {0}"),
    (re.compile(r"(\S+) must be (?:imported|\S+) to load"), "it needs {0}"),
)
_WEIGHTS_ONLY_REFUSAL = "Weights only load failed"


_SAFE_PICKLE_GLOBALS = ("collections.OrderedDict", "torch._utils.", "torch.", "builtins.set", "builtins.frozenset",
                        "_codecs.encode", "numpy.core.multiarray._reconstruct", "numpy.dtype", "numpy.ndarray")


def pickle_globals(path: str | os.PathLike, limit: int = 1 << 24) -> list[str]:
    """The globals (``module.name``) a plain pickle file would import, read statically with
    :mod:`pickletools` (nothing is unpickled); ``[]`` for a zip (``torch.save``) or unreadable file."""
    import pickletools

    found: list[str] = []
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit)
    except OSError:
        return found
    if not data.startswith(b"\x80") and data[:1] not in (b"c", b"("):
        return found
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 -- a damaged pickle: report what was seen before the damage
        pass
    return found


def classify_load_error(exc: BaseException, path: str | os.PathLike | None = None) -> tuple[str, str]:
    """Why ``torch.load(weights_only=True)`` failed: ``("code", what the pickle would do)`` when it was
    refused because loading would execute code, else ``("damaged", a short reason)``.

    torch's own message is never passed on whole: it suggests ``weights_only=False`` (running the
    file's code) and allow-listing globals, which astrotl never recommends.
    """
    text = str(exc)
    for rx, template in _CODE_PATTERNS:
        m = rx.search(text)
        if m:
            return "code", template.format(m.group(1).strip().strip("<>'\""))
    if path is not None:  # a plain pickle the weights-only unpickler could not even parse (e.g. protocol 4)
        unsafe = [g for g in pickle_globals(path) if not g.startswith(_SAFE_PICKLE_GLOBALS)]
        if unsafe:
            return "code", f"it imports and calls {unsafe[0]}"
    if isinstance(exc, EOFError) or not text.strip():
        return "damaged", "the file ends early"
    if _WEIGHTS_ONLY_REFUSAL in text:  # the unpickler met bytes it does not know: not a torch file, or cut short
        inner = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(("Unsupported operand", "String is too"))]
        return "damaged", inner[0] if inner else "its contents are not a PyTorch pickle"
    first = " ".join(text.strip().splitlines()[0].split())
    first = re.sub(r"\[enforce fail at [^\]]*\]\s*\.?\s*", "", first)
    first = first.split(". This is an internal miniz error")[0]
    if isinstance(exc, KeyError) or len(first.strip("'\" ")) < 8:
        first = "its contents are not a PyTorch file"
    return "damaged", first[:160]


def code_refusal_message(path: str | os.PathLike, what: str) -> str:
    """The one-line refusal of a pickle that would execute code when loaded."""
    return (f"refused to load '{path}': loading it would execute code ({what}), which could do anything on this "
            f"machine, so astrotl did not load it and nothing ran; astrotl loads weights only as plain tensors: "
            f"get the weights as a .safetensors file or as a plain state dict "
            f"(torch.save(model.state_dict(), 'weights.pt')) from their author")


def load_checkpoint_object(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` with a clear refusal for unsafe pickles."""
    import warnings

    p = Path(path).expanduser()
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4 ...": noise before the refusal below
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            try:
                return torch.load(str(p), map_location="cpu", weights_only=True)
            except Exception as first:  # noqa: BLE001
                if "AttributeDict" not in str(first):
                    raise
                with torch.serialization.safe_globals(_safe_globals()):  # Lightning's hyper-parameter dict
                    return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch raises several types; the message matters
        kind, detail = classify_load_error(exc, p)
        if kind == "code":
            raise WeightsError(code_refusal_message(p, detail)) from None
        raise WeightsError(f"weights file '{p}' cannot be read ({detail}); it is truncated or not a PyTorch file: "
                           f"copy or download it again") from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a ``torch.save`` file, safely.

    A Lightning checkpoint (a dict with ``state_dict``) or a dict with ``model``/``state_dict``
    keys is unwrapped.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"weights file '{p}' does not exist; give an existing .safetensors/.pt/.pth/.ckpt path, "
                           f"run:<run dir>, a name in the weights directory ({weights_dir()}), or weights: auto|none|imagenet")
    if p.suffix == ".npz":
        raise WeightsError(f"weights file '{p}' is a NumPy archive (JAX/Flax weights); astrotl loads PyTorch state dicts: "
                           f"use the timm/Hugging Face .safetensors version of these weights")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"weights file '{p}' is not a valid safetensors file ({exc}); re-export or re-download it") from None
    obj = load_checkpoint_object(p)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file '{p}' does not hold a state dict of tensors; save model.state_dict() instead")
    return obj


def strip_prefixes(state: dict[str, torch.Tensor], prefixes=("module.", "model.", "net.", "backbone.net.", "backbone.")) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (DDP ``module.``, Lightning ``model.``, astrotl ``backbone.net.``).

    From a whole model (backbone + head) keep the backbone part: astrotl's ``0.net.`` /
    ``backbone.net.``, Zoobot's ``encoder.`` (its Lightning modules hold ``encoder`` and ``head``).
    """
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
            for marker in ("0.net.", "backbone.net.", "encoder."):
                sub = {k.split(marker, 1)[1]: v for k, v in out.items() if k.startswith(marker) or f".{marker}" in k}
                if sub and len(sub) >= len(out) // 4:
                    out = sub
                    changed = True
                    break
    return out


# -- first-convolution adaptation ---------------------------------------------------------------


def adapt_first_conv(weight: torch.Tensor, in_chans: int, mode: str = "repeat",
                     bands: tuple[str, ...] | None = None, rgb_bands: list[str] | None = None) -> torch.Tensor:
    """Turn an RGB first-convolution kernel ``[out, 3, k, k]`` into ``[out, in_chans, k, k]``.

    ``repeat``: timm's ``adapt_input_conv``: cycle the R, G, B kernels over the input bands and
    rescale by ``3 / in_chans`` so that the response to a flat image keeps its scale.
    ``map``: band ``rgb_bands[i]`` gets the kernel of RGB channel ``i``; other bands get zero
    weights (they can learn during fine-tuning), so the pretrained response is kept exactly.
    A single band (``in_chans=1``) gets the sum of the three kernels.
    """
    if weight.shape[1] == in_chans:
        return weight
    if weight.shape[1] != 3:
        raise WeightsError(f"cannot adapt a first convolution with {weight.shape[1]} input channels to {in_chans}; "
                           f"only RGB (3-channel) weights can be adapted")
    out_c, _, kh, kw = weight.shape
    if mode == "repeat":
        from timm.models import adapt_input_conv

        return adapt_input_conv(in_chans, weight).contiguous()
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


# -- named sources ---------------------------------------------------------------------------


def torchvision_request(arch: str, tag: str = "DEFAULT") -> WeightsRequest:
    """The torchvision ImageNet checkpoint of ``arch`` with weight tag ``tag`` (``DEFAULT``, ``IMAGENET1K_V2`` ...)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise WeightsError(f"torchvision has no pretrained weights for '{arch}'") from None
    tags = [t for t in enum.__members__ if t != "DEFAULT"]
    key = tag.upper()
    if key not in enum.__members__:
        raise WeightsError(f"unknown torchvision weight tag '{tag}' for {arch}; use imagenet (the default) or one of {', '.join(tags)}")
    w = enum[key]
    fname = w.url.rsplit("/", 1)[1]
    try:
        t = w.transforms()
        norm = {"mean": list(t.mean), "std": list(t.std), "space": "RGB, 0-1"}
    except Exception:  # noqa: BLE001
        norm = IMAGENET_NORMALISATION
    prefix = fname.rsplit("-", 1)[-1].split(".")[0]
    return WeightsRequest(
        what=f"ImageNet weights for {arch} (torchvision {w.name})", filename=fname, source="imagenet", url=w.url,
        sha256_prefix=prefix if len(prefix) >= 6 else None, key=arch if w.name == enum.DEFAULT.name else f"{arch}:{w.name}",
        meta={"normalisation": norm, "weights_tag": w.name, "origin": w.url, "bands": ["R", "G", "B"],
              "licence": "torchvision model weights (BSD-3-Clause code); trained on ImageNet-1k, whose terms of access apply"})


def find_imagenet_file(arch: str) -> tuple[Path | None, str, list[Path]]:
    """Look for the torchvision ImageNet checkpoint of ``arch`` locally.

    Returns ``(path or None, expected file name, directories searched)``.
    """
    req = torchvision_request(arch)
    return locate(req, allow_download=False), req.filename, weights_search_dirs()


def imagenet_missing_message(arch: str, fname: str | None = None, dirs: list[Path] | None = None) -> str:
    return torchvision_request(arch).missing_message()


def timm_request(model_name: str) -> WeightsRequest:
    """The default pretrained weights of a timm model (``resnet50`` or ``resnet50.a1_in1k``)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except Exception:  # noqa: BLE001
        cfg = None
    if cfg is None:
        raise WeightsError(f"timm has no pretrained weights for '{model_name}'; `python -c \"import timm; "
                           f"print(timm.list_pretrained('{model_name.split('.')[0]}*'))\"` lists the tags")
    c = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    hf = c.get("hf_hub_id") or None
    if hf and hf.endswith("/"):
        hf = hf + model_name
    url = c.get("url") or None
    if url and url.endswith(".npz"):
        url = None
    name = model_name if "." in model_name else (hf.split("/")[-1] if hf else model_name)
    return WeightsRequest(
        what=f"pretrained weights for timm model {name}", filename=hf_flat_name(hf) if hf else url.rsplit("/", 1)[1] if url else f"{name}.safetensors",
        source="imagenet", url=url, hf_repo=hf, key=f"timm:{name}",
        meta={"normalisation": {"mean": list(c.get("mean", IMAGENET_NORMALISATION["mean"])),
                                "std": list(c.get("std", IMAGENET_NORMALISATION["std"])), "space": "RGB, 0-1"},
              "licence": c.get("license"), "origin": f"https://huggingface.co/{hf}" if hf else url,
              "weights_tag": name, "bands": ["R", "G", "B"]})


ZOOBOT_ORG = "mwalmsley"
#: Zoobot encoders published on the Hugging Face hub (``zoobot:<name>`` ->
#: ``mwalmsley/zoobot-encoder-<name>``) and their timm architectures, used when the repo's
#: ``config.json`` is not at hand. Other names are accepted and resolved from ``config.json``.
ZOOBOT_ENCODERS = {
    # Zoobot's "pretrained models" table (zoobot.readthedocs.io/en/latest/pretrained_models.html)
    "convnext_pico": "convnext_pico", "convnext_nano": "convnext_nano", "convnext_tiny": "convnext_tiny",
    "convnext_small": "convnext_small", "convnext_base": "convnext_base", "convnext_large": "convnext_large",
    "maxvit_rmlp_tiny_rw_224": "maxvit_rmlp_tiny_rw_224", "maxvit_rmlp_small_rw_224": "maxvit_rmlp_small_rw_224",
    "maxvit_base_rw_224": "maxvit_base_rw_224", "maxvit_large_tf_224": "maxvit_large_tf_224",
    "resnet18": "resnet18", "resnet50": "resnet50", "resnet101": "resnet101",
    # single-channel versions (Zoobot >= 2.0.1)
    "greyscale-convnext_pico": "convnext_pico", "greyscale-convnext_nano": "convnext_nano",
}


def zoobot_repo(name: str) -> str:
    return f"{ZOOBOT_ORG}/zoobot-encoder-{name}"


def zoobot_request(name: str) -> WeightsRequest:
    repo = zoobot_repo(name)
    return WeightsRequest(
        what=f"Zoobot encoder '{name}' (Hugging Face {repo})", filename=hf_flat_name(repo), source="zoobot",
        hf_repo=repo, key=f"zoobot:{name}",
        meta={"origin": f"https://huggingface.co/{repo}", "licence": "apache-2.0 (Zoobot model card)",
              "bands": ["R", "G", "B"] if not name.startswith("greyscale") else ["grey"],
              "normalisation": {"note": "Zoobot encoders were trained on 0-1 scaled galaxy images (Walmsley et al. 2023)"}})


def zoobot_config(name: str) -> dict[str, Any] | None:
    """The hub repo's ``config.json`` (timm format) from the HF cache or the weights-dir sidecar, if present."""
    repo = zoobot_repo(name)
    hit = find_in_hf_cache(repo, "config.json")
    if hit is not None:
        try:
            return json.loads(hit.read_text())
        except (OSError, ValueError):
            raise WeightsError(f"'{hit}' is not valid JSON; delete the cached Zoobot repo and fetch it again") from None
    flat = weights_dir() / hf_flat_name(repo)
    side = read_metadata(flat) if sidecar_path(flat).is_file() else {}
    return side.get("hf_config")


# -- files, weights-dir names and runs -----------------------------------------------------------


def resolve_run_dir(spec: str) -> Path:
    """``run:<dir>`` (or a run directory path) -> ``<dir>/backbone.safetensors``, checked to exist."""
    raw = spec[4:] if spec.startswith("run:") else spec
    p = Path(raw).expanduser()
    f = p if p.suffix == ".safetensors" else p / RUN_BACKBONE_FILE
    if not f.is_file():
        if not p.exists():
            raise WeightsError(f"run directory '{p}' does not exist (weights: {spec}); run the pre-training task first "
                               f"(e.g. `astrotl run tasks/gz1_pretrain.yaml`) or give the right path (relative paths "
                               f"are relative to {Path.cwd()})")
        raise WeightsError(f"run directory '{p}' has no {RUN_BACKBONE_FILE}: the run did not finish; finish it "
                           f"(`astrotl run ... --resume`) or point weights: at a finished run")
    return f


def resolve_named_file(spec: str) -> Path | None:
    """A path, or a name in the weights directory (with or without a weights suffix); ``None`` if neither."""
    p = Path(spec).expanduser()
    if p.is_file():
        return p
    if p.is_dir() and (p / RUN_BACKBONE_FILE).is_file():
        return p / RUN_BACKBONE_FILE
    if os.sep in spec or "/" in spec:
        return None
    d = weights_dir()
    for cand in [d / spec, *(d / f"{spec}{s}" for s in WEIGHT_SUFFIXES)]:
        if cand.is_file():
            return cand
    return None


def describe(path: str | os.PathLike, *, source: str) -> dict[str, Any]:
    """Record of a weights file for the run's outputs: source, path, sha256, bytes, metadata."""
    rec = file_record(path)
    meta = read_metadata(path)
    info: dict[str, Any] = {"source": source, **rec}
    for key in ("normalisation", "licence", "origin", "weights_tag"):
        if meta.get(key) is not None:
            info[key] = meta[key]
    if meta.get("bands") is not None:
        info["trained_bands"] = meta["bands"]
    if meta.get("backbone") is not None:
        info["trained_backbone"] = meta["backbone"]
    if meta.get("stem_downsample") is not None:
        info["trained_stem_downsample"] = int(meta["stem_downsample"])
    data = meta.get("data")
    if isinstance(data, dict):  # an astrotl export: the data set (and its normalisation) it was trained on
        info["trained_data"] = data.get("name")
        norm = next((data[k] for k in ("normalize", "normalise", "normalisation", "normalization") if k in data), None)
        if norm is not None:
            info.setdefault("normalisation", norm)
    keep = {k: v for k, v in meta.items() if k not in ("hf_config",)}
    if keep:
        info["metadata"] = keep
    return info


def recorded_input_normalisation(spec: str | None) -> dict[str, Any] | None:
    """The input normalisation an astrotl export was trained with, read from its metadata only (no tensors).

    ``spec`` is a ``backbone.weights`` value; only ``run:<dir>``, a file path or a weights-directory name
    can carry it (``input_normalisation`` written by the engine, else the ``pixel_norm`` of the recorded
    ``data`` section). ``None`` for anything else, an unreadable file or an export without the record.
    """
    if not spec or spec.strip().lower() in ("none", "auto", "imagenet", "pretrained"):
        return None
    try:
        path = resolve_run_dir(spec) if spec.startswith("run:") else resolve_named_file(spec)
    except WeightsError:
        return None  # reported with its proper message when the backbone loads the weights
    if path is None:
        return None
    meta = read_metadata(path)
    norm = meta.get("input_normalisation")
    if isinstance(norm, dict) and norm.get("pixel_norm"):
        return norm
    data = meta.get("data")
    if isinstance(data, dict) and data.get("pixel_norm") not in (None, "auto"):
        return {"pixel_norm": data["pixel_norm"], **({"normalize": data["normalize"]} if "normalize" in data else {})}
    return None


def verify_sha256(path: Path, rec: dict[str, Any], req: WeightsRequest) -> None:
    if req.sha256_prefix and not rec["sha256"].startswith(req.sha256_prefix):
        raise WeightsError(f"'{path}' has sha256 {rec['sha256'][:12]}..., expected it to start with {req.sha256_prefix} "
                           f"(the published hash of {req.what}); the file is corrupt or not the official one: delete it "
                           f"and fetch it again")
    meta = read_metadata(path)
    want = meta.get("sha256")
    if isinstance(want, str) and len(want) == 64 and want != rec["sha256"]:
        raise WeightsError(f"'{path}' has sha256 {rec['sha256'][:12]}..., but its metadata sidecar records "
                           f"{want[:12]}...; the file changed since it was imported: re-import it")


def load_request(req: WeightsRequest) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Find, verify and load ``req``; raise the offline-missing error if it is nowhere to be had."""
    path = locate(req)
    if path is None:
        raise WeightsError(req.missing_message())
    info = describe(path, source=req.source)
    verify_sha256(path, info, req)
    for k, v in req.meta.items():
        if k == "bands":
            info.setdefault("trained_bands", v)
        else:
            info.setdefault(k, v)
    return load_state_dict_file(path), info


def load_spec_file(spec: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load ``run:<dir>``, a path, or a name in the weights directory."""
    if spec.startswith("run:"):
        path = resolve_run_dir(spec)
        source = "run"
    else:
        path = resolve_named_file(spec)
        source = "file"
        if path is None:
            raise WeightsError(f"weights '{spec}' is not a file, not run:<dir>, and not a name in the weights directory "
                               f"{weights_dir()}; give an existing .safetensors/.pt/.pth/.ckpt path, import the file with "
                               f"`astrotl weights import FILE`, or use weights: auto|none|imagenet")
    info = describe(path, source=source)
    verify_sha256(path, info, WeightsRequest(what=str(path), filename=path.name, source=source))
    if source == "run":
        info["run"] = str(path.parent)
    return load_state_dict_file(path), info
