"""Frozen-backbone fine-tuning at head speed: the backbone's embeddings, computed once and cached on disk.

When nothing in the backbone trains (``backbone.n_blocks: 0``, a linear probe, or every block
frozen), every epoch would push the same images through the same network. With
``trainer.cache_embeddings`` (``auto`` by default) the engine instead computes each sample's
embedding once -- the pooled features ``backbone(image)`` -- writes them under
``<cache_dir>/embeddings/`` and trains the head on them::

    backbone: {name: resnet18, weights: imagenet, n_blocks: 0}
    task:     {name: classification, augment: none}        # or d4 with embeddings.views: 8
    trainer:  {cache_embeddings: auto, embeddings: {views: 1}}

Augmentation
    A random augmentation changes the images every epoch, so embeddings are cached *per view*:
    ``embeddings: {views: 8}`` stores the embeddings of the eight rotations and flips (the D4
    group) of every training sample, ``views: 2`` the identity and the left-right flip, ``views: 1``
    the image as it is. At each training step the task's own ``batch_augment`` runs on a probe
    image with the step's random generator; the D4 element it applied to each sample picks that
    sample's view. The head therefore sees exactly the draws the uncached run would make (same
    seeds, same samples, same views), and the metrics agree with the uncached run's up to
    floating-point rounding. An augmentation that is not a D4 element (a random shift, noise) or
    needs more views than cached cannot be cached: ``auto`` then trains the usual way (and logs
    why), ``true`` is an error saying what to change.
The key
    ``sha256`` of the backbone's weights (its state dict) + the data (the data section, the split,
    the run seed, the training subset, stamps of the input files named in the data section, a hash
    of the labels and of three samples' pixels) + the task's sample transform and the views.
    Anything else reuses the cache: a second run with another head, learning rate, optimiser or
    number of epochs starts training at once (another run seed recomputes: data sets are built with it).
Checks
    Caching is used only when (1) every parameter of the backbone is frozen and its stateful or
    random layers (BatchNorm, dropout) stay in evaluation mode, (2) the task transforms no sample
    on its own, (3) the run is a single process (no DDP), and (4) the model applied to a few
    embeddings gives what it gives on the images.

Only the training loop changes: the datasets of the run are replaced by datasets of embeddings, the
backbone's ``forward`` passes an embedding through unchanged, and the task's ``batch_augment``
picks views. Metrics, predictions, checkpoints and exported weights are those of the uncached run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ConfigError

log = logging.getLogger(__name__)

#: Bump when the way embeddings are computed changes (part of the cache key).
EMBEDDINGS_VERSION = 1

#: The D4 group as (quarter turns k, left-right flip f), applied as ``rot90(flip(x) if f else x, k)``:
#: the order of :func:`astrotl.data.d4_augment`. Views 1, 2 and 8 are the first 1, 2 and 8 elements.
D4 = tuple((k, f) for k in range(4) for f in (0, 1))


def d4_view(images: torch.Tensor, k: int, f: int) -> torch.Tensor:
    """``images`` ``[..., H, W]`` flipped left-right (``f``) and then turned by ``k`` quarter turns."""
    x = torch.flip(images, dims=(-1,)) if f else images
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def probe_image(h: int, w: int) -> torch.Tensor:
    """``[1, 1, h, w]`` with distinct values: what a D4 element did to it can be read off its pixels."""
    return torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)


def identify_views(augmented: torch.Tensor, probe: torch.Tensor, views: tuple[tuple[int, int], ...],
                   full: bool = False) -> torch.Tensor:
    """Index into ``views`` of the D4 element that turned ``probe`` into each of ``augmented`` ``[B, 1, h, w]``;
    -1 where none did. ``full=False`` reads only the four corners (enough to tell the D4 elements apart,
    once a full check has shown the augmentation is made of D4 elements only)."""
    cands = []
    for k, f in views:
        v = d4_view(probe, k, f)
        cands.append(v if v.shape == probe.shape else None)
    b = augmented.shape[0]
    out = torch.full((b,), -1, dtype=torch.long)
    if augmented.shape[1:] != probe.shape[1:]:
        return out
    a = augmented.detach().to("cpu", torch.float32)
    if not full:
        corners = (a[:, 0, 0, 0], a[:, 0, 0, -1], a[:, 0, -1, 0], a[:, 0, -1, -1])
        a = torch.stack(corners, dim=1)
    else:
        a = a.reshape(b, -1)
    for j, c in enumerate(cands):
        if c is None:
            continue
        ref = torch.stack((c[0, 0, 0, 0], c[0, 0, 0, -1], c[0, 0, -1, 0], c[0, 0, -1, -1])) if not full else c.reshape(-1)
        hit = (a == ref[None]).all(dim=1) & (out < 0)
        out[hit] = j
    return out


# -- datasets of embeddings -----------------------------------------------------------------------


class BatchDict(dict):
    """A batch already collated by :meth:`EmbeddingDataset.__getitems__` (passed through by :func:`collate`)."""


def collate(samples):
    """Collation of embedding samples: a :class:`BatchDict` as it is, else torch's default."""
    if isinstance(samples, BatchDict):
        return dict(samples)
    return torch.utils.data.default_collate(samples)


class EmbeddingDataset(torch.utils.data.Dataset):
    """The samples of a data set with ``image`` replaced by cached embeddings.

    ``image`` is ``[V, F]`` (one embedding per view) for the training split and ``[F]`` otherwise;
    the other per-sample fields (``label``, ``target``, ``votes`` ...) were stored with the
    embeddings. Everything else (``catalog()``, ``labels()``, ``groups()``, ``info()``) is the
    wrapped data set's.
    """

    collate_fn = staticmethod(collate)

    def __init__(self, base, path: Path, fields: dict[str, np.ndarray], *, views: bool):
        self.base, self.path, self.fields, self.views = base, Path(path), fields, views
        self._emb = None

    @property
    def embeddings(self) -> np.ndarray:
        if self._emb is None:
            self._emb = np.load(self.path, mmap_mode="r")
        return self._emb

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_emb"] = None  # DataLoader workers reopen the memory map
        return state

    def __len__(self) -> int:
        return len(self.embeddings)

    def _image(self, idx):
        e = self.embeddings[idx]
        return np.asarray(e if self.views else e[..., 0, :], dtype=np.float32)

    def __getitem__(self, i: int) -> dict[str, Any]:
        out = {"image": torch.from_numpy(self._image(int(i))), "index": int(i)}
        for k, v in self.fields.items():
            out[k] = torch.as_tensor(v[int(i)])
        return out

    def __getitems__(self, indices: list[int]) -> BatchDict:
        idx = np.asarray(indices, dtype=np.int64)
        out = BatchDict(image=torch.from_numpy(self._image(idx)), index=torch.from_numpy(idx))
        for k, v in self.fields.items():
            out[k] = torch.from_numpy(np.ascontiguousarray(v[idx]))
        return out

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("base", "path", "fields", "views"):
            raise AttributeError(name)
        return getattr(self.base, name)


# -- keys -----------------------------------------------------------------------------------------


def state_sha256(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _file_stamps(value: Any) -> list[Any]:
    """Path, size and mtime of every existing file or folder named by a string in ``value`` (recursively)."""
    from .datasets.common import file_stamp

    out: list[Any] = []
    if isinstance(value, dict):
        for v in value.values():
            out += _file_stamps(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            out += _file_stamps(v)
    elif isinstance(value, str) and value and len(value) < 4096:
        try:
            p = Path(value).expanduser()
            if p.exists():
                out.append(file_stamp(p))
        except (OSError, ValueError):
            pass
    return out


def data_key(dataset, split: str, config, transform: Any) -> str:
    """What the embeddings of ``split`` depend on besides the backbone: data section, split, seed, subset,
    input files, labels, three samples' pixels, the sample transform."""
    data = config.to_dict()["data"]
    parts: list[Any] = [config.component("data")[0].name, data, split, config.run.seed, len(dataset),
                        _file_stamps(data), repr(transform)]
    indices = getattr(dataset, "indices", None)
    if isinstance(indices, np.ndarray):
        parts.append(hashlib.sha256(indices.astype(np.int64).tobytes()).hexdigest())
    labels = getattr(dataset, "labels", None)
    if callable(labels):
        try:
            lab = np.asarray(labels())
            parts.append(hashlib.sha256(np.ascontiguousarray(lab).tobytes()).hexdigest())
        except Exception:  # a data set without labels for this split
            pass
    h = hashlib.sha256()
    for i in sorted({0, len(dataset) // 2, len(dataset) - 1}):
        sample = dataset[i]
        sample = transform(sample) if transform else sample
        h.update(np.ascontiguousarray(torch.as_tensor(sample["image"]).float().numpy()).tobytes())
    parts.append(h.hexdigest())
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# -- the decision ---------------------------------------------------------------------------------


def _single_process(t) -> str | None:
    strategy = str(t.strategy).lower()
    if strategy.startswith(("ddp", "fsdp", "deepspeed")) or t.num_nodes > 1:
        return f"trainer.strategy {t.strategy} / num_nodes {t.num_nodes} runs several processes"
    devices = t.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if (isinstance(devices, int) and devices > 1) or (isinstance(devices, list) and len(devices) > 1):
        return f"trainer.devices {t.devices} runs several processes"
    if devices in ("auto", -1, "-1") and str(t.accelerator).lower() != "cpu" and torch.cuda.device_count() > 1:
        return f"trainer.devices {t.devices} uses {torch.cuda.device_count()} GPUs"
    return None


def frozen_reason(model: nn.Module, backbone: nn.Module) -> str | None:
    """Why ``backbone`` is not frozen in training mode (``None``: it is)."""
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    if trainable:
        return (f"the backbone trains ({len(trainable)} trainable tensors, e.g. {trainable[0]}); freeze it with "
                f"backbone.n_blocks: 0")
    was = model.training
    model.train()
    try:
        for name, m in backbone.named_modules():
            if m is backbone:
                continue
            stateful = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
            random = isinstance(m, nn.modules.dropout._DropoutNd) or "drop" in type(m).__name__.lower()
            if (stateful or random) and m.training:
                return f"backbone layer {name} ({type(m).__name__}) stays in training mode, so its output changes"
    finally:
        model.train(was)
    return None


def _device(config) -> torch.device:
    acc = str(config.run.trainer.accelerator).lower()
    if acc in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _passthrough(backbone: nn.Module) -> None:
    """Make ``backbone(x)`` return ``x`` for embeddings ``[B, F]`` (images ``[B, C, H, W]`` still go through)."""
    if getattr(backbone, "_embeddings_passthrough", False):
        return
    original = backbone.forward

    def forward(x, *args, **kwargs):
        if isinstance(x, torch.Tensor) and x.dim() == 2:
            return x
        return original(x, *args, **kwargs)

    backbone.forward = forward
    backbone._embeddings_passthrough = True


def _unpatch(backbone: nn.Module) -> None:
    if getattr(backbone, "_embeddings_passthrough", False):
        del backbone.forward
        backbone._embeddings_passthrough = False


def _same_outputs(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5))
    return False


def _probe_augmentation(task, sample_batch: dict[str, Any], views: tuple, seed: int) -> str | None:
    """Why the task's ``batch_augment`` cannot be replaced by picking one of ``views`` (``None``: it can)."""
    image = sample_batch["image"]
    h, w = image.shape[-2:]
    probe = probe_image(h, w)
    seen: set[int] = set()
    for trial in range(4):
        gen = torch.Generator().manual_seed(seed + trial)
        b = 256
        batch = {k: (v[:1].expand(b, *v.shape[1:]).clone() if isinstance(v, torch.Tensor) and v.dim() >= 1 else v)
                 for k, v in sample_batch.items()}
        batch["image"] = probe.expand(b, 1, h, w).clone()
        try:
            out = task.batch_augment(batch, generator=gen)["image"]
        except Exception as exc:  # an augmentation that needs the real bands
            return f"the task's augmentation could not be probed ({type(exc).__name__}: {exc})"
        which = identify_views(out, probe, D4, full=True)
        if (which < 0).any():
            return ("the task's augmentation changes pixels beyond rotations and flips (e.g. task.max_shift); "
                    "set it to rotations/flips only or train without trainer.cache_embeddings")
        seen |= set(which.tolist())
    needed = [D4[i] for i in sorted(seen)]
    missing = [v for v in needed if v not in views]
    if missing:
        n = 2 if all(k == 0 for k, _ in needed) else 8
        return (f"the task's augmentation uses {len(needed)} rotations/flips but trainer.embeddings.views is "
                f"{len(views)}; set trainer.embeddings.views: {n} (or task.augment: none)")
    return None


def _cached_task(task, views: tuple, hw: tuple[int, int]):
    """A copy of ``task`` whose ``batch_augment`` picks cached views and whose samples need no transform."""
    base = type(task)

    def batch_augment(self, batch, generator=None):
        emb = batch["image"]  # [B, V, F]
        b = emb.shape[0]
        probe = self._emb_probe.expand(b, 1, *self._emb_probe.shape[-2:]).clone().to(emb.device)
        out = base.batch_augment(self, {**batch, "image": probe}, generator)["image"]
        which = identify_views(out, self._emb_probe, self._emb_views)
        if (which < 0).any():
            raise ConfigError("the task's augmentation produced a view that is not cached; rerun with "
                              "trainer.cache_embeddings: false")
        batch = dict(batch)
        batch["image"] = emb[torch.arange(b, device=emb.device), which.to(emb.device)]
        return batch

    cls = type(f"Cached{base.__name__}", (base,), {
        "batch_augment": batch_augment, "train_transform": lambda self: None, "eval_transform": lambda self: None,
        "collate_fn": staticmethod(collate), "__module__": __name__,
        "__doc__": f"{base.__name__} training its head on cached backbone embeddings."})
    new = copy.copy(task)
    new.__class__ = cls
    new._emb_views = tuple(views)
    new._emb_probe = probe_image(*hw)
    return new


# -- computing and caching ------------------------------------------------------------------------


def _save_npy(path: Path, write) -> None:
    from .io import atomic_path

    with atomic_path(path) as tmp:
        write(tmp)


@torch.inference_mode()
def compute_embeddings(dataset, transform, backbone: nn.Module, views: tuple, *, batch_size: int, num_workers: int,
                       collate, device: torch.device, path: Path) -> dict[str, np.ndarray]:
    """Write ``backbone(view(image))`` of every sample and view to ``path`` (``float32 [N, V, F]``, via a
    memory map: memory does not grow with the data set); return the other per-sample fields."""
    from torch.utils.data import DataLoader

    from .engine import _Transformed

    n = len(dataset)
    loader = DataLoader(_Transformed(dataset, transform), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate)
    fields: dict[str, list[np.ndarray]] = {}
    was = backbone.training
    backbone.eval()
    backbone.to(device)
    arr = None
    pos = 0
    try:
        from .io import atomic_path

        with atomic_path(path) as tmp:
            for batch in loader:
                x = batch["image"].to(device)
                feats = [backbone(d4_view(x, k, f)).float().cpu().numpy() for k, f in views]
                if arr is None:
                    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, len(views), feats[0].shape[1]))
                b = x.shape[0]
                arr[pos:pos + b] = np.stack(feats, axis=1)
                for k, v in batch.items():
                    if k not in ("image", "index"):
                        fields.setdefault(k, []).append(torch.as_tensor(v).cpu().numpy())
                pos += b
            if arr is None or pos != n:
                raise ConfigError(f"embedding pass saw {pos} of {n} samples")
            arr.flush()
            del arr
    finally:
        backbone.train(was)
    return {k: np.concatenate(v) for k, v in fields.items()}


def _load_or_compute(name: str, dataset, transform, backbone, views, key: str, cache: Path, cfg, collate,
                     device) -> tuple[EmbeddingDataset, bool, float]:
    folder = cache / "embeddings"
    emb_path = folder / f"emb_{key[:32]}.npy"
    fields_path = folder / f"emb_{key[:32]}.fields.npz"
    t0 = time.time()
    if emb_path.is_file() and fields_path.is_file():
        try:
            z = np.load(fields_path, allow_pickle=False)
            fields = {k: z[k] for k in z.files}
            emb = np.load(emb_path, mmap_mode="r")
            if emb.shape[0] == len(dataset) and emb.shape[1] == len(views):
                return EmbeddingDataset(dataset, emb_path, fields, views=name == "train"), True, time.time() - t0
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable embedding cache %s (%s)", emb_path, exc)
    t = cfg.run.trainer
    fields = compute_embeddings(dataset, transform, backbone, views, batch_size=max(t.batch_size, 256),
                                num_workers=t.num_workers, collate=collate, device=device, path=emb_path)

    def write_fields(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **fields)

    _save_npy(fields_path, write_fields)
    from .io import write_json

    write_json(folder / f"emb_{key[:32]}.json", {"key": key, "split": name, "views": [list(v) for v in views],
                                                 "samples": len(dataset), "version": EMBEDDINGS_VERSION})
    return EmbeddingDataset(dataset, emb_path, fields, views=name == "train"), False, time.time() - t0


def maybe_cache_embeddings(asm, cache_dir: Path):
    """The engine's hook: if the backbone is frozen and caching is allowed, replace ``asm``'s data sets by
    cached embeddings, its task by one that picks views, and let the backbone pass embeddings through.

    Returns ``asm`` (changed in place when caching is used).

    Raises
    ------
    ConfigError
        ``trainer.cache_embeddings: true`` but caching cannot be used (the message says why and what to change).
    """
    config = asm.config
    t = config.run.trainer
    mode = t.cache_embeddings
    if mode is False:
        return asm
    views = D4[: t.embeddings.views]

    def refuse(reason: str):
        if mode is True:
            raise ConfigError(f"trainer.cache_embeddings: true, but {reason}")
        log.info("not caching backbone embeddings: %s", reason)
        return asm

    reason = _single_process(t) or frozen_reason(asm.model, asm.backbone)
    if reason:
        return refuse(reason)
    task = asm.task
    if task.train_transform() is not None:
        return refuse(f"task '{task.name}' transforms each training sample itself (train_transform)")
    train, eval_transform = asm.datasets["train"], task.eval_transform()
    collate_fn = getattr(type(task), "collate_fn", None) or getattr(type(train), "collate_fn", None) \
        or vars(train).get("collate_fn") or torch.utils.data.default_collate
    first = collate_fn([train[i] for i in range(min(4, len(train)))])
    if not isinstance(first.get("image"), torch.Tensor) or first["image"].dim() != 4:
        return refuse("the samples are not single images [C, H, W]")
    loose = [k for k, v in first.items() if k not in ("image", "index") and not isinstance(v, torch.Tensor)]
    if loose:
        return refuse(f"the samples carry fields that are not tensors ({', '.join(loose)})")
    reason = _probe_augmentation(task, first, views, seed=config.run.seed)
    if reason:
        return refuse(reason)
    model, backbone = asm.model, asm.backbone
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = model(first["image"])
            _passthrough(backbone)
            got = model(backbone(first["image"]))
    except Exception as exc:  # a model that does not go image -> backbone -> head
        _unpatch(backbone)
        model.train(was)
        return refuse(f"the model does not take the backbone's embeddings ({type(exc).__name__})")
    model.train(was)
    _unpatch(backbone)
    if not _same_outputs(ref, got):
        return refuse("the model uses the image beyond the backbone's pooled features")
    cache = Path(cache_dir).expanduser()
    device = _device(config)
    bb_key = state_sha256(backbone)
    report: dict[str, Any] = {"views": len(views), "backbone_sha256": bb_key, "splits": {}}
    t0 = time.time()
    new = {}
    for name, ds in asm.datasets.items():
        if len(ds) == 0:
            new[name] = ds
            continue
        transform = None if name == "train" else eval_transform
        split_views = views if name == "train" else D4[:1]
        key = hashlib.sha256(json.dumps([EMBEDDINGS_VERSION, bb_key, data_key(ds, name, config, transform),
                                         [list(v) for v in split_views], type(backbone).__name__],
                                        default=str).encode()).hexdigest()
        new[name], hit, secs = _load_or_compute(name, ds, transform, backbone, split_views, key, cache, config,
                                                collate_fn, device)
        report["splits"][name] = {"samples": len(ds), "views": len(split_views), "key": key[:32],
                                  "cached": hit, "seconds": round(secs, 2)}
    _passthrough(backbone)
    asm.datasets.update(new)
    asm.task = _cached_task(task, views, tuple(first["image"].shape[-2:]))
    asm.backbone.weights_info["embedding_cache"] = report
    log.info("training the head on cached backbone embeddings (%s; %.1f s): %s", cache / "embeddings",
             time.time() - t0, ", ".join(f"{k} {v['samples']} x{v['views']} ({'cached' if v['cached'] else 'computed'})"
                                         for k, v in report["splits"].items()))
    return asm
