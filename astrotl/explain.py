"""Class activation maps for any finished classification run: ``astrotl explain RUN --out DIR``.

    astrotl explain runs/clustertype --out runs/clustertype_explain                     # Grad-CAM, test split
    astrotl explain runs/clustertype --method guided --save-cams fits --out expl/
    astrotl explain runs/phangs_mosaic --data new_data.yaml --split predict --out expl/  # new images

The maps come from `pytorch-grad-cam <https://github.com/jacobgil/pytorch-grad-cam>`_: ``GradCAM``,
``GradCAMPlusPlus`` and guided Grad-CAM (the Grad-CAM map times ``GuidedBackpropReLUModel``'s guided
back-propagation, as Selvaraju et al. 2017 and Stipp & Montana-Lopez 2019). The model is rebuilt by
:func:`astrotl.loadrun.load_run`; the layer explained is the backbone's
:meth:`~astrotl.interfaces.Backbone.cam_layer` (a ResNet's ``layer4``, a VGG's last ReLU, a ConvNeXt's
or timm CNN's last stage), so every backbone family and every plugin's classification task works the
same way. The target of each map is the predicted class (``target="pred"``) or the true class.

What is written into ``out``:

``grid_<class>.png``
    per class, the best (most confident correct), worst (lowest probability of the true class) and
    most confused (smallest margin between the two most probable classes) samples: each as the display
    image and, below it, the map (a heat map over the image; for guided Grad-CAM the guided image);
``mean_cams.png``
    the mean map of each class (images of one size only);
``samples.ecsv``
    one row per sample: classes, probabilities, the fraction of the map's mass within ``radius`` px of
    the image centre (``central_fraction``; a uniform map gives ``uniform_fraction``), the peak;
``summary.ecsv``
    mean, standard deviation and median of ``central_fraction`` per class and per (true, predicted) pair;
``report.md``
    the same in words, with the grids;
``cams/<index>_<id>.npy`` or ``.fits``
    with ``save_cams``: one map per sample, ``float32 [H, W]`` (FITS with the run, method and classes in
    the header).

The display image is built from the bands with :mod:`astropy.visualization`: one band with
``simple_norm`` (``stretch``), three or more with ``make_lupton_rgb`` (``rgb_bands`` names the red,
green and blue bands; default: three bands in their order as R, G, B, more than three the last,
middle and first band, two bands red = second, blue = first, green = their mean).

The output folder is refused if it is not empty unless ``overwrite``; then only what astrotl wrote
there (its ``.astrotl-manifest``) is replaced, and a folder holding files astrotl did not write is
refused even with ``overwrite``.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from astropy.table import Table
from torch import nn

from .errors import ConfigError, DataError, OutputError

log = logging.getLogger(__name__)

METHODS = ("gradcam", "gradcam++", "guided")
SAVE_FORMATS = ("fits", "npy")
TARGETS = ("pred", "true")
STRETCHES = ("asinh", "sqrt", "linear", "log", "sinh", "power")
ROLES = ("best", "worst", "confused")
ROLE_TITLES = {"best": "best (most confident correct)", "worst": "worst (lowest p of the true class)",
               "confused": "most confused (smallest top-2 margin)"}


# -- the output folder ------------------------------------------------------------------------------


def check_output_dir(out: str | Path, *, overwrite: bool, option: str = "--out") -> Path:
    """Check, before any work, that ``out`` may receive outputs (changes nothing).

    A missing or empty folder is fine; a non-empty one needs ``overwrite`` *and* must hold only what
    astrotl wrote (an ``.astrotl-manifest``); a run directory is refused (explanations go to a folder
    of their own), as is a file.

    Raises
    ------
    astrotl.errors.OutputError
        With one line naming the problem and the fix.
    """
    from .rundir import MANIFEST, RunDirectory

    p = Path(out)
    if str(out) == "" or p.name in ("", ".", ".."):
        raise OutputError(f"{option} '{out}' is not a folder name; give a new folder, e.g. {option} explain_out")
    if p.exists() and not p.is_dir():
        raise OutputError(f"{option} '{p}' is a file; give a folder (it is created if missing)")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {option} '{p}': '{parent}' is a file, not a folder; choose another path")
            break
    if not p.is_dir():
        return p
    rd = RunDirectory(p)
    if rd.status() is not None:
        raise OutputError(f"{option} '{p}' is a run directory; write the outputs to a folder of their own, "
                          f"e.g. {option} {p.name}_explain")
    content = [f for f in p.iterdir() if f.name != MANIFEST]
    if not content:
        return p
    if not overwrite:
        raise OutputError(f"{option} '{p}' exists and is not empty; choose a new folder or pass --overwrite (it "
                          f"replaces only what astrotl wrote there)")
    if not rd.manifest_path.is_file():
        raise OutputError(f"{option} '{p}' holds files astrotl did not write (no {MANIFEST}); astrotl will not "
                          f"delete them: choose a new or empty folder")
    return p


def open_output_dir(out: str | Path):
    """Clear what astrotl wrote earlier in ``out`` (after :func:`check_output_dir`), create it and record
    every file written into it from now on; returns the :class:`~astrotl.rundir.RunDirectory` (call
    ``close()`` when done)."""
    from .io import make_dirs, output_error
    from .rundir import RunDirectory

    rd = RunDirectory(out)
    if rd.path.is_dir() and rd.manifest_path.is_file():
        rd.clean()
    try:
        make_dirs(rd.path)
    except OSError as exc:
        raise output_error(rd.path, exc, what="create the folder") from None
    rd.track()
    return rd


# -- display images ---------------------------------------------------------------------------------


def rgb_indices(bands: tuple[str, ...], rgb_bands: list[str] | None = None) -> tuple[int, int | None, int] | None:
    """Channel indices ``(red, green, blue)`` of the display image (``green`` None: mean of red and blue),
    or ``None`` for a grey image (one band).

    Raises
    ------
    astrotl.errors.ConfigError
        If ``rgb_bands`` is not three of ``bands``.
    """
    n = len(bands)
    if rgb_bands:
        if len(rgb_bands) != 3:
            raise ConfigError(f"--rgb-bands needs three band names (red, green, blue), got {list(rgb_bands)}; "
                              f"bands are {list(bands)}")
        idx = []
        for b in rgb_bands:
            if b in bands:
                idx.append(bands.index(b))
            elif b.isdigit() and int(b) < n:
                idx.append(int(b))
            else:
                raise ConfigError(f"--rgb-bands: '{b}' is not one of the bands {list(bands)}; name three of them")
        return idx[0], idx[1], idx[2]
    if n == 1:
        return None
    if n == 2:
        return 1, None, 0
    if n == 3:
        return 0, 1, 2
    return n - 1, n // 2, 0


def display_image(image: np.ndarray, bands: tuple[str, ...], *, rgb_bands: list[str] | None = None,
                  stretch: str = "asinh") -> np.ndarray:
    """An RGB ``float32 [H, W, 3]`` image in [0, 1] from a ``[C, H, W]`` sample, for overlays.

    One band: :func:`astropy.visualization.simple_norm` with ``stretch`` between the 0.5 and 99.5
    percentiles, as grey. Two or more: :func:`astropy.visualization.make_lupton_rgb` of the bands
    :func:`rgb_indices` picks, each shifted to its 1st percentile and all scaled by one 99.5th
    percentile (so the colours keep the bands' relative brightness).

    Examples
    --------
    >>> display_image(np.arange(16.0).reshape(1, 4, 4), ("g",)).shape
    (4, 4, 3)
    """
    from astropy.visualization import make_lupton_rgb, simple_norm

    x = np.nan_to_num(np.asarray(image, dtype=np.float64))
    idx = rgb_indices(tuple(bands), rgb_bands)
    if idx is None:
        band = x[0]
        if np.ptp(band) == 0:
            return np.zeros((*band.shape, 3), dtype=np.float32)
        norm = simple_norm(band, stretch=stretch, percent=99.5, clip=True)
        grey = np.clip(np.asarray(norm(band), dtype=np.float32), 0, 1)
        return np.repeat(grey[..., None], 3, axis=2)
    r_i, g_i, b_i = idx
    planes = [x[r_i], x[g_i] if g_i is not None else 0.5 * (x[r_i] + x[b_i]), x[b_i]]
    planes = [p - np.percentile(p, 1) for p in planes]
    top = float(np.percentile(np.stack(planes), 99.5))
    scale = top if top > 0 else 1.0
    rgb = make_lupton_rgb(*(np.clip(p / scale, 0, None) for p in planes), minimum=0.0, stretch=0.3, Q=6)
    return (np.asarray(rgb, dtype=np.float32) / 255.0).clip(0, 1)


# -- maps ---------------------------------------------------------------------------------------------


def find_backbone(model: nn.Module):
    """The first :class:`~astrotl.interfaces.Backbone` inside ``model`` (the default model is
    ``nn.Sequential(backbone, head)``).

    Raises
    ------
    astrotl.errors.ConfigError
        If the model holds none.
    """
    from .interfaces import Backbone

    for m in model.modules():
        if isinstance(m, Backbone):
            return m
    raise ConfigError("the run's model contains no astrotl Backbone, so the layer to explain is unknown; "
                      "explain needs a model built from an astrotl backbone")


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule of ``model`` called ``name`` (dotted, as ``model.named_modules()`` names it).

    Raises
    ------
    astrotl.errors.ConfigError
        If there is none; the message lists the names of the backbone's stages.
    """
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    from .interfaces import Backbone

    hints = []
    for prefix, m in model.named_modules():
        if isinstance(m, Backbone):
            hints = [module_name(model, b) for b in m.blocks()]
            break
    shown = ", ".join(h for h in hints if h != "?")[:300]
    raise ConfigError(f"--layer '{name}' is not a module of the model; give a dotted name from "
                      f"model.named_modules(){', e.g. one of the stages ' + shown if shown else ''}")


def module_name(model: nn.Module, target: nn.Module) -> str:
    """Dotted name of ``target`` inside ``model`` (``"?"`` if it is not a submodule)."""
    for name, m in model.named_modules():
        if m is target:
            return name or "(model)"
    return "?"


def central_mask(height: int, width: int, radius: float) -> np.ndarray:
    """Boolean ``[H, W]``: pixels whose centre lies within ``radius`` px of the image centre (0-based
    pixel centres, image centre at ``((W - 1) / 2, (H - 1) / 2)``)."""
    yy, xx = np.mgrid[0:height, 0:width]
    return (xx - (width - 1) / 2.0) ** 2 + (yy - (height - 1) / 2.0) ** 2 <= radius ** 2


def central_fraction(cam: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the map's mass (sum of its non-negative values) inside ``mask`` (NaN for an empty map).

    Examples
    --------
    >>> cam = np.zeros((4, 4)); cam[1:3, 1:3] = 1.0
    >>> central_fraction(cam, central_mask(4, 4, 1.0))
    1.0
    """
    c = np.clip(np.asarray(cam, dtype=np.float64), 0, None)
    total = c.sum()
    return float(c[mask].sum() / total) if total > 0 else float("nan")


class CamMaker:
    """Maps of one method for batches of a model's inputs (pytorch-grad-cam underneath).

    Parameters
    ----------
    model : torch.nn.Module
        The classifier (logits out), in eval mode, on its device.
    layer : torch.nn.Module
        The layer whose activations and gradients make the map.
    method : str
        ``gradcam``, ``gradcam++`` or ``guided``.
    """

    def __init__(self, model: nn.Module, layer: nn.Module, method: str):
        from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

        if method not in METHODS:
            raise ConfigError(f"--method {method!r} is not one of {', '.join(METHODS)}")
        self.model, self.method = model, method
        cls = GradCAMPlusPlus if method == "gradcam++" else GradCAM
        self._cam = cls(model=model, target_layers=[layer])
        self._guided = None
        if method == "guided":
            from pytorch_grad_cam import GuidedBackpropReLUModel

            # a copy: guided back-propagation swaps the model's ReLU modules (and would unhook the CAM layer)
            self._guided = GuidedBackpropReLUModel(copy.deepcopy(model).eval(), device=None)

    def __call__(self, x: torch.Tensor, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Maps ``float32 [B, H, W]`` (non-negative, max 1) and, for ``guided``, the guided Grad-CAM images
        ``float32 [B, H, W, C]`` (else ``None``), for the class ``targets[i]`` of sample ``i``."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        # the input needs a gradient: with a frozen backbone nothing else in front of the layer has one
        inp = x.detach().clone().requires_grad_(True)
        cams = self._cam(input_tensor=inp, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        cams = np.nan_to_num(np.asarray(cams, dtype=np.float32))
        if self._guided is None:
            return cams, None
        guided = []
        for i in range(len(x)):
            gb = self._guided(x[i:i + 1].detach().clone(), target_category=int(targets[i]))  # [H, W, C]
            guided.append(cams[i][..., None] * np.asarray(gb, dtype=np.float32))
        g = np.stack(guided).astype(np.float32)
        mass = np.abs(g).sum(axis=3)
        top = mass.reshape(len(mass), -1).max(axis=1)
        mass = mass / np.where(top > 0, top, 1.0)[:, None, None]
        return mass.astype(np.float32), g

    def close(self) -> None:
        """Remove the hooks from the model."""
        self._cam.activations_and_grads.release()


def _overlay(display: np.ndarray, cam: np.ndarray, guided: np.ndarray | None) -> np.ndarray:
    from pytorch_grad_cam.utils.image import deprocess_image, show_cam_on_image

    if guided is None:
        return show_cam_on_image(display.astype(np.float32), np.clip(cam, 0, 1), use_rgb=True, image_weight=0.5)
    g = guided if guided.shape[2] == 3 else guided.sum(axis=2, keepdims=True)
    img = deprocess_image(g)
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


# -- the command ----------------------------------------------------------------------------------------


@dataclass
class ExplainResult:
    """What :func:`explain` wrote: the folder, the per-sample and summary tables, the files, and a one-line
    summary."""

    out: Path
    samples: Table
    summary: Table
    files: list[Path] = field(default_factory=list)
    line: str = ""


def _safe(text: str, limit: int = 60) -> str:
    s = re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(text)).strip("._") or "x"
    return s[:limit]


def _check_args(method, save_cams, target, radius, n_per_class, max_samples, batch_size, stretch) -> None:
    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if save_cams is not None and save_cams not in SAVE_FORMATS:
        raise ConfigError(f"--save-cams {save_cams!r} is not one of {', '.join(SAVE_FORMATS)}")
    if target not in TARGETS:
        raise ConfigError(f"--target {target!r} is not one of {', '.join(TARGETS)}")
    if stretch not in STRETCHES:
        raise ConfigError(f"--stretch {stretch!r} is not one of {', '.join(STRETCHES)}")
    if radius is not None and not (radius > 0 and math.isfinite(radius)):
        raise ConfigError(f"--radius {radius} must be a positive number of pixels (default: a quarter of the image)")
    for name, value in (("--n-per-class", n_per_class), ("--max-samples", max_samples),
                        ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} {value} must be a positive whole number")


def explain(run_dir: str | Path, registries, *, out: str | Path, method: str = "gradcam", split: str = "test",
            overrides: list[str] | None = None, data_file: str | Path | None = None, radius: float | None = None,
            save_cams: str | None = None, target: str = "pred", n_per_class: int = 6,
            max_samples: int | None = None, batch_size: int = 16, device: str = "auto",
            rgb_bands: list[str] | None = None, stretch: str = "asinh", layer: str | None = None,
            dpi: int = 120, overwrite: bool = False) -> ExplainResult:
    """Explain a finished classification run's decisions on the ``split`` of its (or new) data.

    Parameters
    ----------
    run_dir : path-like
        A finished run (a multi-stage run: its last stage).
    registries : astrotl.plugins.Registries
        The component registries (``args.registries`` in a command).
    out : path-like
        Output folder (see :func:`check_output_dir`).
    method : {"gradcam", "gradcam++", "guided"}
        Grad-CAM, Grad-CAM++ or guided Grad-CAM.
    split : str
        ``test`` (default), ``val``, ``train`` or ``predict`` (all of new data).
    overrides, data_file
        Change the run's data section as ``astrotl predict`` does (``data.root=...``; a YAML with ``data:``).
    radius : float, optional
        Central radius in pixels for ``central_fraction`` (default: a quarter of the image's shorter side).
    save_cams : {"fits", "npy"}, optional
        Also write one map per sample into ``out/cams``.
    target : {"pred", "true"}
        Explain the predicted class (default) or the true class (unlabelled samples: the predicted one).
    n_per_class : int
        Samples per row (best / worst / most confused) of each class's grid.
    max_samples : int, optional
        Explain a seeded, class-stratified subset of this many samples (default: all).
    batch_size : int
        Samples per forward / backward pass.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
    rgb_bands : list of str, optional
        Red, green and blue bands of the display image (names or channel numbers).
    stretch : str
        ``simple_norm`` stretch of one-band display images.
    layer : str, optional
        Dotted name of the model's module to explain instead of the backbone's ``cam_layer`` (e.g.
        ``0.net.layer3``: a ResNet's stride-16 stage, for maps twice as fine as ``layer4``'s).
    dpi : int
        Resolution of the figures (dots per inch).
    overwrite : bool
        Replace what astrotl wrote in ``out`` before.

    Returns
    -------
    ExplainResult

    Raises
    ------
    astrotl.errors.AstrotlError
        For anything the user can fix (a run that is not a classifier, bad options, an occupied ``out``).
    """
    from .engine import TrainSubset, cache_dir_for, make_loader, subset_indices
    from .loadrun import load_run
    from .predict import resolve_device

    _check_args(method, save_cams, target, radius, n_per_class, max_samples, batch_size, stretch)
    if not 20 <= dpi <= 600:
        raise ConfigError(f"--dpi {dpi}: give 20 to 600 dots per inch (default 120)")
    check_output_dir(out, overwrite=overwrite)
    dev = resolve_device(device)
    loaded = load_run(run_dir, registries, overrides=overrides, data_file=data_file)
    cfg = loaded.config
    task_cls, _ = cfg.component("task")
    kind = getattr(task_cls, "kind", None) or loaded.meta.get("task_kind")
    if kind != "classification":
        raise ConfigError(f"astrotl explain explains classifiers; '{loaded.path}' is a {kind} run (task "
                          f"{task_cls.name}); class activation maps need a classification task")
    if rgb_bands:
        rgb_indices(tuple(loaded.meta.get("bands") or ()), rgb_bands)  # bad names fail before any work
    ds_cls, ds_cfg = cfg.component("data")
    dataset = ds_cls(ds_cfg, split=split, seed=cfg.run.seed, cache_dir=cache_dir_for(cfg))
    if len(dataset) == 0:
        raise DataError(f"the {split} split of the data has no samples; choose another --split or other data")
    info = loaded.check_info(dataset.info())
    model, task = loaded.model_for(dataset.info())
    classes = list(info.classes or [])
    if not classes:
        raise ConfigError(f"the run '{loaded.path}' has no classes to explain; explain needs a classifier")
    backbone = find_backbone(model)
    target_layer = find_layer(model, layer) if layer else backbone.cam_layer()
    layer_name = module_name(model, target_layer)
    if cfg.run.trainer.num_threads:
        torch.set_num_threads(cfg.run.trainer.num_threads)  # as the run did (a shared machine)
    model.to(dev).eval()
    full_catalog = dataset.catalog()
    if max_samples is not None and max_samples < len(dataset):
        picked = subset_indices(dataset, max_samples, unit="samples", seed=0, stratify=True)
        source = TrainSubset(dataset, picked)
    else:
        picked = np.arange(len(dataset))
        source = dataset
    ids = np.asarray(full_catalog["id"])[picked] if "id" in full_catalog.colnames else picked
    loader = make_loader(source, task.eval_transform(), cfg.run.trainer, task=task, batch_size=batch_size)
    outdir = Path(out)
    rows: list[dict[str, Any]] = []
    cams_to_save: list[tuple[int, np.ndarray]] = []
    mean_sum: dict[int, np.ndarray] = {}
    mean_n: dict[int, int] = {}
    base: tuple[int, int, float] | None = None  # (H, W, radius) of the first image: the mean maps use this size
    masks: dict[tuple[int, int], tuple[np.ndarray, float]] = {}
    maker = CamMaker(model, target_layer, method)
    try:
        for batch in loader:
            x = batch["image"].to(dev).float()
            with torch.no_grad():
                probs = torch.softmax(model(x).float(), dim=1).cpu().numpy()
            pred = probs.argmax(axis=1)
            labels = batch.get("label")
            labels = labels.cpu().numpy().astype(int) if labels is not None else np.full(len(x), -1)
            tgt = np.where((labels >= 0) & (target == "true"), labels, pred)
            cams, _ = maker(x, tgt)
            h, w = cams.shape[1:]
            if (h, w) not in masks:
                r = float(radius) if radius is not None else min(h, w) / 4.0
                masks[(h, w)] = (central_mask(h, w, r), r)
            mask, r = masks[(h, w)]
            base = base or (h, w, r)
            top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.c_[np.zeros(len(probs)), probs]
            for i in range(len(x)):
                pos = int(batch["index"][i])
                cam = cams[i]
                py, px = np.unravel_index(int(np.argmax(cam)), cam.shape)
                lab = int(labels[i])
                rows.append({
                    "index": int(picked[pos]), "id": str(ids[pos]),
                    "true_class": classes[lab] if lab >= 0 else "", "pred_class": classes[int(pred[i])],
                    "target_class": classes[int(tgt[i])],
                    "p_true": float(probs[i, lab]) if lab >= 0 else float("nan"),
                    "pred_prob": float(probs[i, pred[i]]), "margin": float(top2[i, 1] - top2[i, 0]),
                    "central_fraction": central_fraction(cam, mask), "uniform_fraction": float(mask.mean()),
                    "radius_px": r, "peak_x": int(px), "peak_y": int(py),
                    "peak_dist": float(math.hypot(px - (w - 1) / 2.0, py - (h - 1) / 2.0)),
                    "_pos": pos, "_lab": lab, "_pred": int(pred[i]), "_tgt": int(tgt[i]),
                })
                key = lab if lab >= 0 else -1 - int(pred[i])
                if (h, w) == base[:2]:
                    mean_sum[key] = mean_sum.get(key, 0) + cam
                    mean_n[key] = mean_n.get(key, 0) + 1
                if save_cams:
                    cams_to_save.append((len(rows) - 1, cam.astype(np.float32)))
            log.info("explained %d / %d samples", len(rows), len(source))
    finally:
        maker.close()
    if not rows:
        raise DataError("no samples were explained; check the data section and --split")
    labelled = any(r["_lab"] >= 0 for r in rows)
    roles = _select_roles(rows, classes, n_per_class, labelled)
    for r in rows:
        r["roles"] = ",".join(sorted(roles.get(id(r), []))) or "none"
    meta = {"run": str(loaded.path), "method": method, "layer": layer_name, "backbone": backbone.name,
            "split": split, "target": target, "radius_px": float(base[2]), "classes": classes,
            "bands": list(info.bands), "n_samples": len(rows),
            "description": "central_fraction: fraction of the map's mass within radius_px of the image centre; "
                           "uniform_fraction: the same for a uniform map (the disk's share of the image)"}
    # -- write ------------------------------------------------------------------------------------------
    from .io import save_figure, write_table, write_text

    rd = open_output_dir(outdir)
    files: list[Path] = []
    try:
        if cams_to_save:
            for row_i, cam in cams_to_save:
                r = rows[row_i]
                name = f"{r['index']:06d}_{_safe(r['id'])}.{'fits' if save_cams == 'fits' else 'npy'}"
                path = outdir / "cams" / name
                _write_cam(path, cam, save_cams, r, meta)
                r["cam_file"] = f"cams/{name}"
                files.append(path)
        samples = _samples_table(rows, meta)
        summary = summary_table(samples, classes, labelled)
        summary.meta.update(meta)
        files.append(write_table(outdir / "samples.ecsv", samples))
        files.append(write_table(outdir / "summary.ecsv", summary))
        grids = []
        for k, cls in enumerate(classes):
            chosen = roles["by_class"].get(k, {})
            if not any(chosen.values()):
                continue
            fig = _grid_figure(chosen, rows, source, task, maker_args=(model, target_layer, method), dev=dev, target=target,
                               bands=tuple(info.bands), rgb_bands=rgb_bands, stretch=stretch, cls=cls,
                               labelled=labelled, method=method)
            path = outdir / f"grid_{_safe(cls)}.png"
            grids.append(save_figure(fig, path, dpi=dpi))
        files += grids
        if mean_sum:
            files.append(_mean_figure(mean_sum, mean_n, classes, outdir / "mean_cams.png", method, base, dpi))
        line = _headline(summary, meta, labelled)
        report = _report(samples, summary, meta, grids, outdir, labelled, line, bool(mean_sum), save_cams)
        files.append(write_text(outdir / "report.md", report))
    finally:
        rd.close()
    return ExplainResult(outdir, samples, summary, files, line)


def _select_roles(rows: list[dict[str, Any]], classes: list[str], n: int, labelled: bool) -> dict:
    """``{"by_class": {k: {role: [row numbers]}}, id(row): [roles]}``."""
    out: dict[Any, Any] = {"by_class": {}}
    for k in range(len(classes)):
        if labelled:
            mine = [i for i, r in enumerate(rows) if r["_lab"] == k]
            best = sorted((i for i in mine if rows[i]["_pred"] == k), key=lambda i: -rows[i]["p_true"])
            worst = sorted(mine, key=lambda i: rows[i]["p_true"])
        else:
            mine = [i for i, r in enumerate(rows) if r["_pred"] == k]
            best = sorted(mine, key=lambda i: -rows[i]["pred_prob"])
            worst = sorted(mine, key=lambda i: rows[i]["pred_prob"])
        confused = sorted(mine, key=lambda i: rows[i]["margin"])
        chosen = {"best": best[:n], "worst": worst[:n], "confused": confused[:n]}
        out["by_class"][k] = chosen
        for role, idx in chosen.items():
            for i in idx:
                out.setdefault(id(rows[i]), []).append(role)
    return out


def _samples_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> Table:
    cols = ["index", "id", "true_class", "pred_class", "target_class", "p_true", "pred_prob", "margin",
            "central_fraction", "uniform_fraction", "radius_px", "peak_x", "peak_y", "peak_dist", "roles"]
    if any("cam_file" in r for r in rows):
        cols.append("cam_file")
    t = Table({c: [r.get(c, "") for r in rows] for c in cols}, meta=dict(meta))
    for c in ("radius_px", "peak_dist"):
        t[c].unit = "pix"
    t["central_fraction"].description = "fraction of the map's mass within radius_px of the image centre"
    t["uniform_fraction"].description = "central_fraction of a uniform map"
    t["margin"].description = "difference of the two highest class probabilities"
    t["peak_x"].description = "0-based column of the map's maximum"
    t["roles"].description = "the grids showing the sample: best, worst, confused (comma-separated) or none"
    return t


def summary_table(samples: Table, classes: list[str], labelled: bool) -> Table:
    """Statistics of ``central_fraction`` for all samples, per class (true class when labelled, else
    predicted) and per (true, predicted) pair.

    Returns
    -------
    astropy.table.Table
        Columns ``group`` (``all`` / ``class`` / ``pair``), ``true_class``, ``pred_class``, ``n``,
        ``central_fraction_mean``, ``central_fraction_std``, ``central_fraction_median``,
        ``peak_dist_median``, ``uniform_fraction``.
    """
    frac = np.asarray(samples["central_fraction"], dtype=float)
    dist = np.asarray(samples["peak_dist"], dtype=float)
    uni = float(np.asarray(samples["uniform_fraction"], dtype=float).mean())
    true = np.asarray(samples["true_class"]).astype(str)
    pred = np.asarray(samples["pred_class"]).astype(str)
    rows = []

    def add(group: str, t: str, p: str, m: np.ndarray) -> None:
        if not m.any():
            return
        f = frac[m][np.isfinite(frac[m])]
        rows.append((group, t, p, int(m.sum()), float(f.mean()) if len(f) else np.nan,
                     float(f.std(ddof=1)) if len(f) > 1 else np.nan, float(np.median(f)) if len(f) else np.nan,
                     float(np.median(dist[m])), uni))

    add("all", "", "", np.ones(len(frac), dtype=bool))
    for c in classes:
        add("class", c if labelled else "", "" if labelled else c, (true == c) if labelled else (pred == c))
    if labelled:
        for t in classes:
            for p in classes:
                add("pair", t, p, (true == t) & (pred == p))
    return Table(rows=rows, names=("group", "true_class", "pred_class", "n", "central_fraction_mean",
                                   "central_fraction_std", "central_fraction_median", "peak_dist_median",
                                   "uniform_fraction"),
                 dtype=(str, str, str, int, float, float, float, float, float))


def _write_cam(path: Path, cam: np.ndarray, fmt: str, row: dict[str, Any], meta: dict[str, Any]) -> None:
    from .io import atomic_path, make_dirs

    make_dirs(path.parent)
    with atomic_path(path) as tmp:
        if fmt == "npy":
            with open(tmp, "wb") as fh:
                np.save(fh, cam)
        else:
            from astropy.io import fits

            hdr = fits.Header()
            for key, value in (("RUN", meta["run"][-68:]), ("METHOD", meta["method"]), ("LAYER", meta["layer"][-68:]),
                               ("TARGET", row["target_class"]), ("TRUE", row["true_class"]),
                               ("PRED", row["pred_class"]), ("PPRED", row["pred_prob"]),
                               ("CENTFRAC", row["central_fraction"]), ("RADIUS", meta["radius_px"]),
                               ("OBJID", str(row["id"])[-68:]), ("INDEX", row["index"])):
                hdr[key] = value if not (isinstance(value, float) and not math.isfinite(value)) else "nan"
            fits.PrimaryHDU(cam, header=hdr).writeto(tmp, overwrite=True)


def _grid_figure(chosen: dict[str, list[int]], rows, source, task, *, maker_args, dev, target, bands, rgb_bands,
                 stretch, cls, labelled, method):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, layer, meth = maker_args
    transform = task.eval_transform()
    ncol = max(len(v) for v in chosen.values())
    role_list = [r for r in ROLES if chosen.get(r)]
    fig, axes = plt.subplots(2 * len(role_list), ncol, figsize=(1.7 * ncol + 0.6, 3.5 * len(role_list)),
                             squeeze=False)
    maker = CamMaker(model, layer, meth)
    try:
        for ri, role in enumerate(role_list):
            idx = chosen[role]
            samples = [source[rows[i]["_pos"]] for i in idx]
            samples = [transform(s) if transform else s for s in samples]
            x = torch.stack([torch.as_tensor(s["image"]) for s in samples]).to(dev).float()
            tgt = np.array([rows[i]["_tgt"] for i in idx])
            cams, guided = maker(x, tgt)
            for j in range(ncol):
                a_img, a_cam = axes[2 * ri, j], axes[2 * ri + 1, j]
                a_img.axis("off")
                a_cam.axis("off")
                if j >= len(idx):
                    continue
                r = rows[idx[j]]
                disp = display_image(x[j].detach().cpu().numpy(), bands, rgb_bands=rgb_bands, stretch=stretch)
                a_img.imshow(disp, origin="upper", interpolation="nearest")
                a_cam.imshow(_overlay(disp, cams[j], None if guided is None else guided[j]), origin="upper",
                             interpolation="nearest")
                truth = f"{r['true_class']}->" if labelled else ""
                a_img.set_title(f"{str(r['id'])[:14]}\n{truth}{r['pred_class']} p={r['pred_prob']:.2f}", fontsize=7)
                a_cam.set_title(f"central {r['central_fraction']:.2f}", fontsize=7)
            axes[2 * ri, 0].text(-0.08, 0.5, ROLE_TITLES[role].split(" (")[0], transform=axes[2 * ri, 0].transAxes,
                                 rotation=90, va="center", ha="right", fontsize=9)
    finally:
        maker.close()
    who = "true" if labelled else "predicted"
    fig.suptitle(f"{method}, map of the {target} class: {who} class '{cls}'\nrows: "
                 + "; ".join(ROLE_TITLES[r] for r in role_list), fontsize=8)
    fig.tight_layout(rect=(0.02, 0, 1, 0.97))
    return fig


def _mean_figure(mean_sum, mean_n, classes, path: Path, method: str, shape, dpi: int = 120) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    from .io import save_figure

    keys = sorted(mean_sum, key=lambda k: (k < 0, abs(k)))
    fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 2.9), squeeze=False)
    h, w, r = shape
    for ax, k in zip(axes[0], keys):
        m = mean_sum[k] / max(mean_n[k], 1)
        ax.imshow(m, origin="upper", cmap="inferno", vmin=0)
        ax.add_patch(Circle(((w - 1) / 2, (h - 1) / 2), r, fill=False, color="cyan", lw=1, ls="--"))
        label = f"true {classes[k]}" if k >= 0 else f"predicted {classes[-1 - k]}"
        ax.set_title(f"{label} (N={mean_n[k]})", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"mean {method} map per class; dashed: central radius {r:g} px", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)


def _headline(summary: Table, meta: dict[str, Any], labelled: bool) -> str:
    per = [r for r in summary if r["group"] == "class"]
    parts = ", ".join(f"{r['true_class'] or r['pred_class']} {r['central_fraction_mean']:.2f}" for r in per)
    return (f"explained {meta['n_samples']} samples ({meta['split']} split) with {meta['method']} on "
            f"{meta['layer']}; mean CAM mass within {meta['radius_px']:g} px of the centre (uniform map "
            f"{summary['uniform_fraction'][0]:.2f}): {parts}")


def _report(samples, summary, meta, grids, outdir, labelled, line, mean_plot, save_cams) -> str:
    lines = [f"# Explanations of `{meta['run']}`", "",
             f"- method: **{meta['method']}** (pytorch-grad-cam) on layer `{meta['layer']}` of backbone "
             f"`{meta['backbone']}`; map of the **{meta['target']}** class",
             f"- data: the `{meta['split']}` split, {meta['n_samples']} samples; bands {', '.join(meta['bands'])}",
             f"- central radius: {meta['radius_px']:g} px (a uniform map puts {summary['uniform_fraction'][0]:.3f} of "
             f"its mass inside it)", "", line, "",
             "## Where the network looks", "",
             "`central_fraction` is the share of the map's mass within the central radius; above the uniform value "
             "the network looks at the centre of the image, below it at the outskirts.", "",
             "| group | true class | predicted class | N | mean | std | median | median peak distance (px) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['group']} | {r['true_class']} | {r['pred_class']} | {r['n']} | "
                     f"{r['central_fraction_mean']:.3f} | {r['central_fraction_std']:.3f} | "
                     f"{r['central_fraction_median']:.3f} | {r['peak_dist_median']:.1f} |")
    lines += [""]
    if grids or mean_plot:
        lines += ["## Grids", ""]
        if mean_plot:
            lines += ["![mean maps](mean_cams.png)", ""]
        lines += [f"![{g.stem}]({g.name})" for g in grids] + [""]
        lines += ["Rows of each grid: " + "; ".join(ROLE_TITLES[r] for r in ROLES) + ". Each sample shows the "
                  "display image and, below it, the map over it" + (" (guided Grad-CAM: the guided image)."
                                                                     if meta["method"] == "guided" else "."), ""]
    lines += ["## Files", "",
              "- `samples.ecsv`: one row per sample (classes, probabilities, central_fraction, peak, grid roles)",
              "- `summary.ecsv`: the table above", "- `grid_<class>.png`, `mean_cams.png`: the figures"]
    if save_cams:
        lines.append(f"- `cams/`: one map per sample ({save_cams}, float32 [H, W], non-negative, maximum 1)")
    return "\n".join(lines) + "\n"
