"""Simulated DSS2-like open and globular cluster images as an :class:`astrotl.ImageDataset`.

YAML::

    data:
      name: clustertype_sim
      n_train: 2000
      n_val: 400
      n_test: 400
      size: 64                 # 224 with pixel_scale_arcsec: 1.2 for the paper's recipe
      pixel_scale_arcsec: 4.0  # a 64 px image covers 4.3 arcmin
      normalize: fixed         # (x - 0.38) / 0.13, the same for every split

Labels: 0 ``open``, 1 ``globular``. The catalogue (:meth:`ClustertypeSimDataset.catalog`)
carries the sub-types and physical parameters (see
:data:`astrotl_clustertype.simulate.COLUMNS`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from astropy.table import Table
from pydantic import Field, model_validator

from astrotl.errors import DataError
from astrotl.interfaces import ComponentConfig, DatasetInfo, ImageDataset

from .simulate import BANDS, CLASSES, SimConfig, simulate_cached

log = logging.getLogger(__name__)

SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2, "predict": 3}

#: Mean and standard deviation of the default simulation's pixel values (600 images,
#: seed 11): ``normalize: fixed`` maps the plate densities with these constants.
PLATE_MEAN = 0.38
PLATE_STD = 0.13

CLASS_DESCRIPTIONS = ("open cluster", "globular cluster")

_Pair = tuple[float, float]


class ClustertypeSimConfig(ComponentConfig):
    """Options of :class:`ClustertypeSimDataset` (simulator options as in :class:`SimConfig`)."""

    n_train: int = Field(2000, ge=1, description="training images")
    n_val: int = Field(400, ge=1, description="validation images")
    n_test: int = Field(400, ge=0, description="test images (also the size of the predict split)")
    seed: int = Field(0, ge=0, description="simulation seed (independent of the run seed)")
    size: int = Field(64, ge=16, le=1024, description="image side in pixels")
    pixel_scale_arcsec: float = Field(4.0, ge=0.1, le=60, description="output pixel scale (arcsec / px)")
    plate_scale_arcsec: float = Field(1.0, ge=0.1, le=60, description="plate sampling (DSS2: 1 arcsec / px)")
    class_fractions: _Pair = Field((0.5, 0.5), description="relative numbers of open and globular clusters")
    open_subtype_fractions: tuple[float, float, float] = Field(
        (0.4, 0.4, 0.2), description="relative numbers of poor, rich and nebulous open clusters")
    open_distance_kpc: _Pair = Field((1.5, 8.0), description="open-cluster distances (log-uniform)")
    globular_distance_kpc: _Pair = Field((4.0, 40.0), description="globular-cluster distances (log-uniform)")
    extinction_range: _Pair = Field((0.0, 2.0), description="A_R of the cluster (mag)")
    field_density_range: _Pair = Field((0.3, 30.0), description="field stars / arcmin^2 to R = 21 (log-uniform)")
    seeing_range_arcsec: _Pair = Field((2.0, 3.0), description="seeing FWHM (arcsec)")
    sky_mag_range: _Pair = Field((20.3, 21.3), description="sky surface brightness (mag / arcsec^2)")
    gamma_range: _Pair = Field((0.7, 1.0), description="contrast of the plate's characteristic curve")
    grain_noise: float = Field(0.03, ge=0, le=1, description="grain noise per plate pixel at density 1")
    normalize: Literal["fixed", "image", "none"] = Field(
        "fixed", description="fixed: (x - 0.38) / 0.13 for every split; image: per-image median and "
                             "robust sigma; none: plate densities in [0, 1]")

    @model_validator(mode="after")
    def _check(self):
        for name in ("open_distance_kpc", "globular_distance_kpc", "extinction_range", "field_density_range",
                     "seeing_range_arcsec", "sky_mag_range", "gamma_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {[lo, hi]}")
        return self

    def sim_config(self) -> SimConfig:
        """The simulator configuration (raises :class:`~astrotl.errors.DataError` if invalid)."""
        keys = ("size", "pixel_scale_arcsec", "plate_scale_arcsec", "class_fractions", "open_subtype_fractions",
                "open_distance_kpc", "globular_distance_kpc", "extinction_range", "field_density_range",
                "seeing_range_arcsec", "sky_mag_range", "gamma_range", "grain_noise")
        return SimConfig(**{k: getattr(self, k) for k in keys})


def normalize_plates(images: np.ndarray, mode: str) -> np.ndarray:
    """Normalise plate densities ``[N, C, H, W]`` (``fixed``, ``image`` or ``none``), float32."""
    x = np.asarray(images, dtype=np.float32)
    if mode == "fixed":
        return (x - np.float32(PLATE_MEAN)) / np.float32(PLATE_STD)
    if mode == "image":
        med = np.median(x, axis=(2, 3), keepdims=True)
        mad = np.median(np.abs(x - med), axis=(2, 3), keepdims=True)
        return ((x - med) / np.maximum(1.4826 * mad, 1e-3)).astype(np.float32)
    if mode == "none":
        return x.copy()
    raise DataError(f"normalize={mode!r} is not one of fixed, image, none; set data.normalize to one of them")


class ClustertypeSimDataset(ImageDataset):
    """Simulated DSS2-like images of open (0) and globular (1) star clusters, generated once and cached."""

    name = "clustertype_sim"
    Config = ClustertypeSimConfig

    def __init__(self, config: ClustertypeSimConfig, *, split: str, seed: int, cache_dir: Path):
        super().__init__(config, split=split, seed=seed, cache_dir=cache_dir)
        n = {"train": config.n_train, "val": config.n_val, "test": config.n_test, "predict": config.n_test}[split]
        sim_seed = int(np.random.SeedSequence([config.seed, SPLIT_OFFSETS[split]]).generate_state(1)[0])
        try:
            sim = config.sim_config()
            result = simulate_cached(n, sim, sim_seed, Path(cache_dir) / "clustertype_sim")
        except DataError as exc:
            raise DataError(f"data (clustertype_sim): {exc}") from None
        self._catalog = result.catalog
        self._labels = np.asarray(result.catalog["cls"], dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
        self._images = torch.from_numpy(normalize_plates(result.images, config.normalize))

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self._images[index], "label": int(self._labels[index]), "index": index}

    def info(self) -> DatasetInfo:
        c = self.config
        return DatasetInfo(bands=BANDS, classes=CLASSES, class_descriptions=CLASS_DESCRIPTIONS, image_size=c.size,
                           extra={"pixel_scale_arcsec": c.pixel_scale_arcsec, "simulated": True})

    def catalog(self) -> Table:
        """One row per image: ``id``, ``cls``, ``class_name``, ``subtype`` and the physical parameters."""
        return self._catalog

    def labels(self) -> np.ndarray:
        """Class index per image (0 open, 1 globular)."""
        return self._labels

    def raw_images(self) -> torch.Tensor:
        """The normalised image stack ``[N, 1, size, size]`` (for plots)."""
        return self._images


# --------------------------------------------------------------------------------------
# real images: Stellarium's nebula textures typed with OpenNGC


class ClustertypeStellariumConfig(ComponentConfig):
    """Options of :class:`ClustertypeStellariumDataset`."""

    root: str | None = Field(
        None, description="cache folder filled by 'python -m astrotl_clustertype.stellarium fetch --cache DIR' "
                          "(default $ASTROTL_STELLARIUM_CACHE or ~/.cache/astrotl/stellarium)")
    size: int = Field(64, ge=8, le=1024, description="images are resized to size x size px")
    color: Literal["grayscale", "rgb"] = Field("grayscale", description="one grey channel (like a plate) or R,G,B")
    include_nebulous: bool = Field(
        False, description="also use OpenNGC 'Cl+N' (star cluster + nebula) objects as open clusters; their "
                           "images are often dominated by the nebula (M42, IC 1396)")
    split_fractions: tuple[float, float, float] = Field(
        (0.6, 0.2, 0.2), description="train, val, test fractions of the overlap groups (seeded, stratified)")
    split_seed: int = Field(0, description="seed of the stratified split (independent of the run seed)")
    pixel_norm: Literal["dataset", "imagenet", "unit"] = Field(
        "dataset", description="x/255 then the training split's per-channel mean/std, ImageNet's, or none")
    max_images: int | None = Field(None, ge=1, description="use only the first N clusters (quick tests)")
    bands: list[str] | None = Field(
        None, description="channel names (default L, or R,G,B); e.g. [DSS2_red] to apply a model trained on "
                          "clustertype_sim, whose one band has that name (the grey channel is not a DSS2 plate)")


#: Label-table columns carried into :meth:`ClustertypeStellariumDataset.catalog`.
STELLARIUM_COLUMNS = ("ongc_type", "subtype", "designation", "messier", "ra", "dec", "fov_arcmin", "texture",
                      "credit", "group")


def overlap_groups(ra: np.ndarray, dec: np.ndarray, fov_arcmin: np.ndarray) -> np.ndarray:
    """Group id per image: images whose square footprints (side ``fov_arcmin``) overlap share a group.

    Friends-of-friends on the sky: images ``i`` and ``j`` are linked when their centres lie closer than
    ``(fov_i + fov_j) / 2``, and a group is a connected set of links, so that a cluster seen in
    another cluster's image never falls in another split or cross-validation fold.

    Parameters
    ----------
    ra, dec : array_like
        Image centres (deg).
    fov_arcmin : array_like
        Side of each image (arcmin).

    Returns
    -------
    numpy.ndarray
        ``int`` group id per image (0 .. n_groups - 1, in order of first appearance).

    Examples
    --------
    >>> overlap_groups([10.0, 10.1, 50.0], [0.0, 0.0, 0.0], [10.0, 10.0, 10.0]).tolist()
    [0, 0, 1]
    """
    ra = np.radians(np.asarray(ra, dtype=float))
    dec = np.radians(np.asarray(dec, dtype=float))
    fov = np.asarray(fov_arcmin, dtype=float)
    n = len(ra)
    xyz = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=1)
    sep = np.degrees(np.arccos(np.clip(xyz @ xyz.T, -1.0, 1.0))) * 60.0 if n else np.zeros((0, 0))
    linked = sep < 0.5 * (fov[:, None] + fov[None, :])
    group = np.full(n, -1, dtype=np.int64)
    g = 0
    for start in range(n):
        if group[start] >= 0:
            continue
        stack = [start]
        group[start] = g
        while stack:
            i = stack.pop()
            for j in np.flatnonzero(linked[i] & (group < 0)):
                group[j] = g
                stack.append(int(j))
        g += 1
    return group


def grouped_labels(labels_file: Path, cache_dir: Path) -> Path:
    """``labels_file`` with a ``group`` column (the ``id`` of the first image of each :func:`overlap_groups`
    group), written once into ``cache_dir/clustertype_stellarium/`` (named by the labels file's hash); the
    Stellarium cache itself is left as it is."""
    import hashlib

    from astrotl.io import write_table

    data = labels_file.read_bytes()
    dest = Path(cache_dir) / "clustertype_stellarium" / f"labels_{hashlib.sha256(data).hexdigest()[:16]}.ecsv"
    if dest.is_file():
        return dest
    table = Table.read(labels_file, format="ascii.ecsv")
    group = overlap_groups(np.asarray(table["ra"], float), np.asarray(table["dec"], float),
                           np.asarray(table["fov_arcmin"], float))
    ids = np.asarray(table["id"]).astype(str)
    first = {}
    for i, g in enumerate(group):
        first.setdefault(int(g), ids[i])
    table["group"] = [first[int(g)] for g in group]
    table["group"].description = "overlap group: id of its first image (images whose footprints overlap share one)"
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_table(dest, table)
    return dest


class ClustertypeStellariumDataset(ImageDataset):
    """Real open (0) and globular (1) cluster images: Stellarium's textures typed with OpenNGC (not DSS2).

    Images whose footprints overlap on the sky form one group (:func:`overlap_groups`; ``group`` column,
    :meth:`groups`): the seeded, stratified splits keep each group whole, and so does the core's k-fold
    cross-validation (``cv:`` in the task file, :mod:`astrotl.crossval`), which reads :meth:`groups`.
    """

    name = "clustertype_stellarium"
    Config = ClustertypeStellariumConfig

    def __init__(self, config: ClustertypeStellariumConfig, *, split: str, seed: int, cache_dir: Path):
        super().__init__(config, split=split, seed=seed, cache_dir=cache_dir)
        from astrotl.datasets.image_folder import ImageFolderConfig, ImageFolderDataset

        from .stellarium import CLUSTERS_SUBDIR, default_cache, fetch_command

        root = Path(config.root).expanduser() if config.root else default_cache()
        folder = root / CLUSTERS_SUBDIR
        if not (folder / "labels.ecsv").is_file():
            raise DataError(f"data (clustertype_stellarium): no cluster images in '{folder}'; run "
                            f"'{fetch_command(root)}' first (downloads Debian's stellarium-data, ~250 MB, "
                            f"installs nothing) or set data.root to the folder given to --cache")
        class_map = {"OCl": "open", "GCl": "globular"}
        if config.include_nebulous:
            class_map["Cl+N"] = "open"
        try:
            inner = ImageFolderConfig(
                root=str(folder), labels=str(grouped_labels(folder / "labels.ecsv", cache_dir)), file_col="file",
                id_col="id", label_col="ongc_type", class_map=class_map, classes=list(CLASSES),
                class_descriptions=list(CLASS_DESCRIPTIONS), extra_columns=list(STELLARIUM_COLUMNS),
                group_col="group", color=config.color, resize=config.size, split_fractions=config.split_fractions,
                split_seed=config.split_seed, pixel_norm=config.pixel_norm, max_images=config.max_images,
                bands=config.bands,
            )
            self._inner = ImageFolderDataset(inner, split=split, seed=seed, cache_dir=cache_dir)
        except DataError as exc:
            raise DataError(f"data (clustertype_stellarium): {exc}") from None

    def __len__(self) -> int:
        return len(self._inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._inner[index]

    def info(self) -> DatasetInfo:
        base = self._inner.info()
        return DatasetInfo(bands=base.bands, classes=CLASSES, class_descriptions=CLASS_DESCRIPTIONS,
                           image_size=base.image_size, extra={**base.extra, "simulated": False,
                                                              "source": "stellarium-data nebula textures"})

    def catalog(self) -> Table:
        """``id`` (OpenNGC name), ``file``, ``label_raw`` (OpenNGC type), ``class`` and :data:`STELLARIUM_COLUMNS`
        (``group``: the overlap group)."""
        return self._inner.catalog()

    def labels(self) -> np.ndarray:
        """Class index per image (0 open, 1 globular; -1 unlabelled, predict split only)."""
        return np.asarray(self._inner.labels())

    def groups(self) -> np.ndarray:
        """Overlap group of each image (text: the ``id`` of the group's first image; :func:`overlap_groups`).
        Splits and cross-validation folds keep each group whole."""
        return self._inner.groups()

    def raw_images(self) -> np.ndarray:
        """Resized, not normalised ``uint8`` images ``[N, C, size, size]``."""
        return self._inner.raw_images()
