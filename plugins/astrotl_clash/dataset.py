"""CANDELS / CLASH morphology vote fractions as :class:`astrotl.ImageDataset` s.

Two data sets, one sample dictionary::

    {"image": float32 tensor [1, size, size],   # one band of one galaxy
     "target": float32 tensor [5],              # vote fractions (spheroid, disk, irregular,
                                                #   point_source, unclassifiable), summing to 1
     "votes": int64 tensor [5],                 # vote counts, when the panel size is known
     "index": int}

``clash_sim`` (:class:`ClashSimDataset`)
    Simulated stamps and votes (:mod:`astrotl_clash.simulate`): ``domain: candels`` (F160W, one stamp
    per galaxy) or ``domain: clash`` (one stamp per galaxy and CLASH band).
``clash_votes`` (:class:`ClashVotesDataset`)
    The real vote fractions of Perez-Carrasco et al. (2019) (``CLASH_labels.csv``, 1,600 stamps, or
    ``CANDELS_labels.csv``, 7,567 galaxies) joined to FITS stamps a user supplies in
    ``stamps_dir``.

The single channel is called ``"flux"`` in :class:`~astrotl.interfaces.DatasetInfo` ``bands``: it
holds whichever filter the sample's catalogue row names in its ``band`` column (a model that sees
one band at a time is band-agnostic; naming the channel after one filter would be wrong for the
other 15).

Splits are grouped by galaxy (``galaxy_id``): all bands of a galaxy fall in one split, and
:meth:`groups` gives the galaxy ids so that the engine's ``train_subset`` keeps whole galaxies.

Normalisation (``normalize``, :class:`astrotl.data.NormalizeConfig`) defaults to *per-image*
scaling: subtract the stamp's median, divide by its robust noise (1.4826 MAD), asinh stretch with
softening 3 and clip at +-10. The 16 bands have depths and units that differ by orders of magnitude
(and real stamps may come in e-/s, counts or nJy), so a single per-channel ``dataset`` scale would
leave UV stamps as faint noise and IR stamps saturated; in noise units every stamp shows what a
classifier with an auto-stretch sees, including that a faint galaxy is faint.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from astropy.table import Table
from pydantic import Field, field_validator, model_validator

from astrotl.data import NormalizeConfig, normalize_images
from astrotl.errors import DataError
from astrotl.interfaces import ComponentConfig, DatasetInfo, ImageDataset

from .simulate import CLASH_BANDS, CLASSES, SimConfig, simulate_cached

log = logging.getLogger(__name__)

__all__ = ["CHANNEL", "ClashSimConfig", "ClashSimDataset", "ClashVotesConfig", "ClashVotesDataset",
           "LABEL_COLUMNS", "infer_votes", "parse_clash_id", "read_labels"]

#: Name of the one image channel (the band of a sample is in its catalogue row).
CHANNEL = ("flux",)
SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2, "predict": 2}
_SPLIT_NAME = {"train": "train", "val": "val", "test": "test", "predict": "test"}
#: Columns of the real label files, in :data:`~astrotl_clash.simulate.CLASSES` order.
LABEL_COLUMNS = ("p_smooth", "p_features", "p_irregular", "p_point_source", "p_unclassifiable")
_DEFAULT_PER_IMAGE = dict(background="image_median", scale="image", stretch="asinh", softening=3.0, clip=10.0)


def _default_normalize() -> NormalizeConfig:
    return NormalizeConfig(**_DEFAULT_PER_IMAGE)


class _VoteSamples:
    """Sample access, targets, votes, labels and groups shared by both data sets."""

    _images: torch.Tensor
    _targets: np.ndarray
    _votes: np.ndarray | None
    _catalog: Table

    def __len__(self) -> int:
        return int(self._targets.shape[0])

    def __getitem__(self, index: int):
        sample = {"image": self._images[index], "target": torch.from_numpy(self._targets[index]), "index": index}
        if self._votes is not None:
            sample["votes"] = torch.from_numpy(self._votes[index])
        return sample

    def catalog(self) -> Table:
        return self._catalog

    def targets(self) -> np.ndarray:
        """Vote fractions ``[N, 5]`` (float32) in :data:`~astrotl_clash.simulate.CLASSES` order."""
        return self._targets

    def votes(self) -> np.ndarray | None:
        """Vote counts ``[N, 5]`` (int64), or ``None`` when the panel sizes are not known."""
        return self._votes

    def labels(self) -> np.ndarray:
        """Class with the most votes per sample (int64; ties: the first), for stratification."""
        return np.argmax(self._targets, axis=1).astype(np.int64) if len(self) else np.zeros(0, dtype=np.int64)

    def groups(self) -> np.ndarray:
        """Galaxy id of every sample: all stamps of one galaxy share it."""
        return np.asarray(self._catalog["galaxy_id"]) if len(self) else np.zeros(0, dtype=str)

    def raw_images(self) -> torch.Tensor:
        """The normalised image stack ``[N, 1, size, size]`` (for plots)."""
        return self._images


# ----------------------------------------------------------------------------------------------
# simulated


class ClashSimConfig(ComponentConfig):
    """Options of :class:`ClashSimDataset` (numbers are galaxies; CLASH galaxies give one stamp per band)."""

    domain: Literal["candels", "clash"] = Field("candels", description="candels: F160W source domain; clash: 16-band target")
    n_train: int | None = Field(None, ge=0, description="training galaxies (default candels 3000, clash 60)")
    n_val: int | None = Field(None, ge=0, description="validation galaxies (default candels 500, clash 20)")
    n_test: int | None = Field(None, ge=0, description="test galaxies (default candels 500, clash 20)")
    seed: int = Field(0, ge=0, description="simulation seed (independent of the run seed)")
    size: int = Field(64, ge=12, le=512, description="stamp side in pixels (the paper used 80)")
    bands: list[str] | None = Field(None, description="clash: subset of the 16 CLASH filters (default all)")
    framing: Literal["petrosian", "fixed"] = Field(
        "petrosian", description="stamp side = 4 Petrosian radii resampled to size (the paper) or the mosaic pixel scale")
    mag_range: tuple[float, float] = Field((18.0, 24.5), description="F160W AB magnitude range (paper: H < 24.5)")
    type_fractions: tuple[float, float, float, float] | None = Field(
        None, description="relative numbers of spheroids, disks, irregulars, point sources (None: domain default)")
    defect_rate: float | None = Field(None, ge=0, le=1, description="fraction of galaxies with a cosmic ray, spikes, "
                                                                    "edge or blend (None: domain default)")
    voters: tuple[int, int] | None = Field(None, description="panel size range per galaxy (None: candels 4-8, clash 5-9)")
    vote_concentration: float = Field(25.0, gt=0, description="Dirichlet concentration of the panel's votes")
    neighbours: float = Field(0.5, ge=0, description="mean number of unrelated faint neighbours per stamp")
    depth_offset: float = Field(0.0, description="magnitudes added to every band's depth (positive: deeper)")
    noise: bool = Field(True, description="add noise (false: noiseless model images)")
    normalize: NormalizeConfig = Field(default_factory=_default_normalize,
                                       description="per-image noise scaling and asinh stretch by default")

    @field_validator("bands")
    @classmethod
    def _upper(cls, v):
        return None if v is None else [str(b).upper() for b in v]

    @model_validator(mode="after")
    def _check(self):
        try:
            self.sim_config()
        except ValueError as exc:
            raise ValueError(str(exc).replace("SimConfig.", "data.")) from None
        return self

    def counts(self) -> dict[str, int]:
        """Galaxies per split (``predict`` = ``test``)."""
        d = {"candels": (3000, 500, 500), "clash": (60, 20, 20)}[self.domain]
        n = [d[i] if v is None else v for i, v in enumerate((self.n_train, self.n_val, self.n_test))]
        return {"train": n[0], "val": n[1], "test": n[2], "predict": n[2]}

    def sim_config(self) -> SimConfig:
        return SimConfig(domain=self.domain, size=self.size, bands=tuple(self.bands) if self.bands else None,
                         type_fractions=tuple(self.type_fractions) if self.type_fractions else None,
                         mag_range=tuple(self.mag_range), defect_rate=self.defect_rate, framing=self.framing,
                         voters=tuple(self.voters) if self.voters else None,
                         vote_concentration=self.vote_concentration, neighbours=self.neighbours,
                         depth_offset=self.depth_offset, noise=self.noise)


class ClashSimDataset(_VoteSamples, ImageDataset):
    """Simulated CANDELS (F160W) or CLASH (16-band) galaxy stamps with simulated vote fractions."""

    name = "clash_sim"
    Config = ClashSimConfig

    def __init__(self, config: ClashSimConfig, *, split: str, seed: int, cache_dir: Path):
        super().__init__(config, split=split, seed=seed, cache_dir=cache_dir)
        self.sim = config.sim_config()
        n = config.counts()[split]
        sim_seed = int(np.random.SeedSequence([config.seed, SPLIT_OFFSETS[split]]).generate_state(1)[0])
        try:
            result = simulate_cached(n, self.sim, sim_seed, Path(cache_dir) / "clash_sim")
        except ValueError as exc:
            raise DataError(f"data (clash_sim): {exc}") from None
        cat = result.catalog.copy()
        prefix = f"{config.domain}-{_SPLIT_NAME[split]}-"
        gid = np.array([f"{prefix}{int(g):05d}" for g in cat["galaxy"]], dtype=str) if len(cat) else np.zeros(0, str)
        ids = gid if config.domain == "candels" else np.char.add(np.char.add(gid, "_"), np.asarray(cat["band"], str)) \
            if len(cat) else gid
        cat.add_column(ids, name="id", index=0)
        cat.add_column(gid, name="galaxy_id", index=1)
        cat.meta["split"] = split
        self._catalog = cat
        self._targets = np.stack([np.asarray(cat[f"p_{c}"], dtype=np.float32) for c in CLASSES], axis=1) \
            if len(cat) else np.zeros((0, 5), np.float32)
        self._votes = np.stack([np.asarray(cat[f"votes_{c}"], dtype=np.int64) for c in CLASSES], axis=1) \
            if len(cat) else np.zeros((0, 5), np.int64)
        imgs = result.images[:, None]
        self._images = torch.from_numpy(normalize_images(imgs, config.normalize)) if len(imgs) else \
            torch.zeros((0, 1, config.size, config.size))

    def info(self) -> DatasetInfo:
        return DatasetInfo(bands=CHANNEL, targets=CLASSES, image_size=self.config.size,
                           extra={"band_per_sample": True, "filters": list(self.sim.bands), "domain": self.config.domain})


# ----------------------------------------------------------------------------------------------
# real labels


_CLASH_ID = re.compile(r"^(?P<cluster>[A-Za-z0-9.+-]+)_(?P<band>[Ff]\d{3}[A-Za-z]+)_(?P<object>[^_\s]+)$")


def parse_clash_id(id_: str) -> tuple[str, str, str]:
    """Split a CLASH label id ``<cluster>_<band>_<object>`` into its parts.

    Parameters
    ----------
    id_ : str
        E.g. ``"macs1206_f435w_1322"``.

    Returns
    -------
    cluster, band, object : str
        ``("macs1206", "F435W", "1322")``; the band is upper-case.

    Raises
    ------
    astrotl.errors.DataError
        If the id does not have that form or names a filter CLASH did not use.

    Examples
    --------
    >>> parse_clash_id("a611_f475w_860")
    ('a611', 'F475W', '860')
    """
    m = _CLASH_ID.match(str(id_).strip())
    if not m:
        raise DataError(f"CLASH id '{id_}' is not of the form <cluster>_<band>_<id> (e.g. macs1206_f435w_1322); "
                        f"fix the ID column of the labels file")
    band = m["band"].upper()
    if band not in CLASH_BANDS:
        raise DataError(f"CLASH id '{id_}' names filter {band}, which is not one of the 16 CLASH filters "
                        f"({', '.join(CLASH_BANDS)}); fix the ID column of the labels file")
    return m["cluster"], band, m["object"]


def infer_votes(fractions: np.ndarray, min_voters: int = 1, max_denominator: int = 12,
                tol: float = 2e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vote counts behind vote fractions, from the smallest panel size they are consistent with.

    Parameters
    ----------
    fractions : numpy.ndarray
        ``[N, K]`` vote fractions.
    min_voters : int
        Smallest plausible panel (the paper: at least 5 classifiers per CLASH stamp); a row whose
        fractions fit ``n`` voters gets the smallest multiple of ``n`` that is ``>= min_voters``.
    max_denominator : int
        Largest panel size tried; rows that fit none (weighted averages) get ``max_denominator``
        voters and counts by largest-remainder rounding.
    tol : float
        Largest ``|fraction * n - round(fraction * n)|`` accepted as an integer count.

    Returns
    -------
    votes : numpy.ndarray
        ``[N, K]`` int64 counts.
    n_voters : numpy.ndarray
        ``[N]`` int64 panel sizes.
    exact : numpy.ndarray
        ``[N]`` bool, True where the fractions are exactly counts over ``n_voters``.

    Examples
    --------
    >>> v, n, exact = infer_votes(np.array([[0.4, 0.6, 0, 0, 0], [1.0, 0, 0, 0, 0]]), min_voters=5)
    >>> v.tolist(), n.tolist(), exact.tolist()
    ([[2, 3, 0, 0, 0], [5, 0, 0, 0, 0]], [5, 5], [True, True])
    """
    f = np.asarray(fractions, dtype=np.float64)
    N = f.shape[0]
    n_voters = np.zeros(N, dtype=np.int64)
    exact = np.zeros(N, dtype=bool)
    for n in range(1, max_denominator + 1):
        todo = n_voters == 0
        if not todo.any():
            break
        x = f[todo] * n
        ok = np.all(np.abs(x - np.round(x)) < tol, axis=1)
        rows = np.flatnonzero(todo)[ok]
        n_voters[rows] = n
        exact[rows] = True
    mult = np.maximum(np.ceil(max(min_voters, 1) / np.maximum(n_voters, 1)), 1).astype(np.int64)
    n_voters = np.where(exact, n_voters * mult, max(max_denominator, min_voters))
    raw = f * n_voters[:, None]
    votes = np.floor(raw + tol).astype(np.int64)
    rest = n_voters - votes.sum(axis=1)
    order = np.argsort(-(raw - votes), axis=1, kind="stable")
    for i in np.flatnonzero(rest > 0):
        votes[i, order[i, : rest[i]]] += 1
    return votes, n_voters, exact


def _shared_data_dir() -> Path:
    env = os.environ.get("ASTROTL_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    here = Path("../shared/data")
    if here.is_dir():
        return here
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "data"


def default_labels_path(domain: str) -> Path:
    """``${ASTROTL_SHARED_DATA:-../shared/data}/candels_clash_labels_only/<CLASH|CANDELS>_labels.csv``."""
    return _shared_data_dir() / "candels_clash_labels_only" / f"{domain.upper()}_labels.csv"


def read_labels(path: str | os.PathLike, domain: str = "clash") -> Table:
    """Read a Perez-Carrasco et al. (2019) labels file into a table of ids and vote fractions.

    Parameters
    ----------
    path : str or path-like
        ``CLASH_labels.csv`` or ``CANDELS_labels.csv`` (columns ``ID, p_smooth, p_features,
        p_irregular, p_point_source, p_unclassifiable``).
    domain : {"clash", "candels"}
        How to parse the ids: CLASH ``<cluster>_<band>_<object>``, CANDELS ``<field>_<object>``
        (e.g. ``GDS_deep2_10000``, all F160W).

    Returns
    -------
    astropy.table.Table
        Columns ``id, galaxy_id, band, cluster`` (CLASH; ``field`` for CANDELS), ``object`` and
        ``p_spheroid, p_disk, p_irregular, p_point_source, p_unclassifiable`` (renormalised to sum to
        1; the files round them to 9 decimals).

    Raises
    ------
    astrotl.errors.DataError
        Missing or unreadable file, missing columns, duplicate or malformed ids, fractions that are
        negative, not numbers or do not sum to 1 within 0.01.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"labels file '{p}' not found; set data.labels to {domain.upper()}_labels.csv (or set "
                        f"ASTROTL_SHARED_DATA to the folder holding candels_clash_labels_only/)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = Table.read(p, format="ascii.csv", fast_reader=False)
    except Exception as exc:  # noqa: BLE001 -- any parse failure is the user's file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"labels file '{p}' is not a readable CSV ({first}); give the original "
                        f"{domain.upper()}_labels.csv") from None
    need = ("ID",) + LABEL_COLUMNS
    missing = [c for c in need if c not in t.colnames]
    if missing:
        raise DataError(f"labels file '{p}' lacks column(s) {', '.join(missing)}; it needs {', '.join(need)} "
                        f"(has {', '.join(t.colnames[:8])})")
    ids = np.array([str(v).strip() for v in t["ID"]], dtype=str)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise DataError(f"labels file '{p}' repeats id(s) {', '.join(dup[:3])}{' ...' if len(dup) > 3 else ''} "
                        f"({len(dup)} in all); give each stamp one row")
    try:
        frac = np.stack([np.asarray(np.ma.filled(np.ma.asarray(t[c], dtype=float), np.nan)) for c in LABEL_COLUMNS],
                        axis=1)
    except (TypeError, ValueError):
        raise DataError(f"labels file '{p}': the p_* columns must hold numbers; fix the file") from None
    sums = frac.sum(axis=1)
    bad = ~np.isfinite(sums) | (frac < 0).any(axis=1) | (np.abs(sums - 1) > 0.01)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"labels file '{p}': row '{ids[i]}' has vote fractions {frac[i].round(4).tolist()} (sum "
                        f"{sums[i]:.4g}); fractions must be >= 0 and sum to 1 ({int(bad.sum())} such row(s))")
    frac = frac / sums[:, None]
    out = Table()
    out["id"] = ids
    if domain == "clash":
        parts = [parse_clash_id(i) for i in ids]
        cluster = np.array([c for c, _, _ in parts], dtype=str)
        obj = np.array([o for _, _, o in parts], dtype=str)
        out["galaxy_id"] = np.char.add(np.char.add(cluster, "_"), obj)
        out["band"] = np.array([b for _, b, _ in parts], dtype=str)
        out["cluster"] = cluster
        out["object"] = obj
    else:
        field, obj = [], []
        for i in ids:
            head, sep, tail = i.rpartition("_")
            field.append(head if sep else "")
            obj.append(tail)
        out["galaxy_id"] = ids
        out["band"] = np.full(len(ids), "F160W")
        out["field"] = np.array(field, dtype=str)
        out["object"] = np.array(obj, dtype=str)
    for j, c in enumerate(CLASSES):
        out[f"p_{c}"] = frac[:, j]
    out.meta["labels_file"] = str(p)
    return out


def _group_split(groups: np.ndarray, fractions, seed: int) -> np.ndarray:
    """``train``/``val``/``test`` per row, whole groups at a time (seeded, largest-remainder counts of groups)."""
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    order = uniq[rng.permutation(len(uniq))]
    f = np.asarray(fractions, dtype=float)
    f = f / f.sum()
    raw = f * len(uniq)
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: len(uniq) - counts.sum()]] += 1
    names = np.repeat(np.array(["train", "val", "test"], dtype=object), counts)
    where = dict(zip(order, names))
    return np.array([where[g] for g in groups], dtype=object)


def _filter_of(header) -> str | None:
    """The filter named in an HST header (``FILTER``, or ``FILTER1``/``FILTER2`` that is not CLEAR)."""
    for key in ("FILTER", "FILTER1", "FILTER2"):
        v = str(header.get(key, "")).strip().upper()
        if v and not v.startswith("CLEAR") and v != "N/A":
            return v
    return None


def _pixel_scale(header) -> float:
    try:
        if "CD1_1" in header:
            det = header["CD1_1"] * header.get("CD2_2", 0.0) - header.get("CD1_2", 0.0) * header.get("CD2_1", 0.0)
            return float(math.sqrt(abs(det)) * 3600.0)
        if "CDELT1" in header:
            return float(abs(header["CDELT1"]) * 3600.0)
    except (TypeError, ValueError):
        pass
    return float("nan")


def read_stamp(path: str | os.PathLike, *, hdu=None, size: int, band: str | None = None,
               check_filter: bool = True) -> tuple[np.ndarray, dict]:
    """Read one FITS stamp, centre-crop it to a square and resample it to ``size`` x ``size``.

    Parameters
    ----------
    path : str or path-like
        The FITS file.
    hdu : int, str or None
        HDU index or EXTNAME (``None``: the first 2-D image).
    size : int
        Output side in pixels (bilinear, anti-aliased when shrinking).
    band : str or None
        Filter the stamp should be in; with ``check_filter`` a header naming another filter is an error.
    check_filter : bool
        Compare the header's ``FILTER``/``FILTER1``/``FILTER2`` with ``band``.

    Returns
    -------
    image : numpy.ndarray
        float32 ``[size, size]`` (NaNs kept).
    meta : dict
        ``stamp_nx, stamp_ny, pixel_scale`` (arcsec/px from the WCS, NaN if none), ``exptime``
        (``EXPTIME``, NaN if absent), ``bunit``, ``filter`` (header, or "").
    """
    from astrotl.fitsio import open_fits, select_hdu

    p = Path(path)
    hdul = open_fits(p, band=band or "image")
    try:
        i = select_hdu(hdul, hdu, path=p, band=band or "image")
        h = hdul[i]
        data = np.asarray(h.data, dtype=np.float32)
        header = h.header
        primary = hdul[0].header
        filt = _filter_of(header) or _filter_of(primary)
        meta = {"stamp_nx": int(data.shape[-1]) if data.ndim else 0, "stamp_ny": int(data.shape[0]) if data.ndim else 0,
                "pixel_scale": _pixel_scale(header),
                "exptime": float(header.get("EXPTIME", primary.get("EXPTIME", np.nan))),
                "bunit": str(header.get("BUNIT", primary.get("BUNIT", ""))).strip(), "filter": filt or ""}
    finally:
        hdul.close()
    data = np.squeeze(data)
    if data.ndim != 2 or min(data.shape) < 2:
        raise DataError(f"stamp '{p}' has data of shape {list(data.shape)}, not a 2-D image; give one image per "
                        f"file (or set data.hdu)")
    if check_filter and band and filt and filt != band.upper():
        raise DataError(f"stamp '{p}' is a {filt} image (header) but its label is for {band.upper()}; fix the file "
                        f"names / data.file_pattern, or set data.check_filter: false")
    ny, nx = data.shape
    m = min(ny, nx)
    y0, x0 = (ny - m) // 2, (nx - m) // 2
    sq = data[y0: y0 + m, x0: x0 + m]
    if m != size:
        t = torch.from_numpy(np.ascontiguousarray(np.nan_to_num(sq, nan=np.nanmedian(sq) if np.isfinite(sq).any()
                                                                 else 0.0)))[None, None]
        sq = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                                             antialias=m > size)[0, 0].numpy()
    return np.ascontiguousarray(sq, dtype=np.float32), meta


class ClashVotesConfig(ComponentConfig):
    """Options of :class:`ClashVotesDataset`."""

    domain: Literal["clash", "candels"] = Field("clash", description="CLASH_labels.csv (16 bands) or CANDELS_labels.csv")
    labels: str | None = Field(
        None, description="labels CSV (default ${ASTROTL_SHARED_DATA:-../shared/data}/candels_clash_labels_only/"
                          "<CLASH|CANDELS>_labels.csv)")
    stamps_dir: str | None = Field(None, description="folder of the FITS stamps, one file per label row")
    file_pattern: str | None = Field(
        None, description="stamp file name from the id: fields {id}, {cluster}, {field}, {band} (lower case, as in the "
                          "ids), {BAND}, {object}; default clash '{cluster}_{band}_{object}.fits', candels '{id}.fits'")
    hdu: int | str | None = Field(None, description="HDU index or EXTNAME of the image (default: first 2-D image)")
    size: int = Field(64, ge=8, le=1024, description="stamps are centre-cropped to a square and resampled to this side")
    bands: list[str] | None = Field(None, description="clash: keep only these filters (default all 16)")
    split_fractions: tuple[float, float, float] = Field((0.6, 0.2, 0.2), description="train, val, test (by galaxy)")
    split_seed: int = Field(0, description="seed of the grouped split")
    missing: Literal["error", "drop"] = Field("error", description="rows without a stamp: error, or drop them (warning)")
    votes: Literal["none", "infer"] = Field(
        "none", description="infer vote counts from the fractions' denominators (for dirichlet_multinomial)")
    min_voters: int | None = Field(None, ge=1, description="smallest panel when inferring votes (clash 5, candels 3)")
    max_denominator: int = Field(12, ge=1, le=100, description="largest panel size tried when inferring votes")
    check_filter: bool = Field(True, description="the FITS header's filter must match the label's band")
    normalize: NormalizeConfig = Field(default_factory=_default_normalize,
                                       description="per-image noise scaling and asinh stretch by default")
    cache: bool = Field(True, description="cache the resampled stamps in cache_dir")

    @field_validator("bands")
    @classmethod
    def _bands(cls, v):
        if v is None:
            return None
        v = [str(b).upper() for b in v]
        bad = [b for b in v if b not in CLASH_BANDS]
        if bad:
            raise ValueError(f"bands {bad} are not CLASH filters; choose from {list(CLASH_BANDS)}")
        return v

    @model_validator(mode="after")
    def _check(self):
        f = self.split_fractions
        if any(x < 0 for x in f) or sum(f) <= 0:
            raise ValueError(f"split_fractions must be >= 0 and not all 0, got {list(f)}")
        if self.bands is not None and self.domain == "candels" and self.bands != ["F160W"]:
            raise ValueError("bands: the CANDELS labels are all F160W; remove data.bands or use domain: clash")
        return self

    def pattern(self) -> str:
        return self.file_pattern or ("{cluster}_{band}_{object}.fits" if self.domain == "clash" else "{id}.fits")


class ClashVotesDataset(_VoteSamples, ImageDataset):
    """Real CLASH (or CANDELS) vote fractions (Perez-Carrasco et al. 2019) joined to user-supplied FITS stamps."""

    name = "clash_votes"
    Config = ClashVotesConfig

    def __init__(self, config: ClashVotesConfig, *, split: str, seed: int, cache_dir: Path):
        super().__init__(config, split=split, seed=seed, cache_dir=cache_dir)
        path = Path(config.labels).expanduser() if config.labels else default_labels_path(config.domain)
        table = read_labels(path, config.domain)
        # split the whole file by galaxy first, so that a galaxy's split does not depend on data.bands
        assign = _group_split(np.asarray(table["galaxy_id"]), config.split_fractions, config.split_seed)
        table["split"] = np.asarray(assign, dtype=str)
        if config.bands is not None:
            table = table[np.isin(np.asarray(table["band"]), config.bands)]
            if len(table) == 0:
                raise DataError(f"no label in '{path}' is in bands {config.bands}; choose other data.bands")
        if split != "predict":
            table = table[np.asarray(table["split"]) == split]
        frac = np.stack([np.asarray(table[f"p_{c}"], dtype=np.float64) for c in CLASSES], axis=1) \
            if len(table) else np.zeros((0, 5))
        min_voters = config.min_voters or (5 if config.domain == "clash" else 3)
        votes, n_voters, exact = infer_votes(frac, min_voters, config.max_denominator)
        if config.votes == "infer":
            table["n_voters"] = n_voters
            table["votes_exact"] = exact
            for j, c in enumerate(CLASSES):
                table[f"votes_{c}"] = votes[:, j]
        table["file"] = np.array([self._file_name(row) for row in table], dtype=str) if len(table) else \
            np.zeros(0, dtype=str)
        table = self._check_files(table)
        frac = np.stack([np.asarray(table[f"p_{c}"], dtype=np.float64) for c in CLASSES], axis=1) \
            if len(table) else np.zeros((0, 5))
        images, metas = self._load_images(table)
        for key in ("stamp_nx", "stamp_ny", "pixel_scale", "exptime", "bunit"):
            table[key] = [m[key] for m in metas] if len(table) else np.zeros(0)
        table.meta["split"] = split
        table.meta["domain"] = config.domain
        self._catalog = table
        self._targets = frac.astype(np.float32)
        self._votes = None
        if config.votes == "infer":
            self._votes = np.stack([np.asarray(table[f"votes_{c}"], dtype=np.int64) for c in CLASSES], axis=1) \
                if len(table) else np.zeros((0, 5), np.int64)
        self._images = torch.from_numpy(normalize_images(images[:, None], config.normalize)) if len(images) else \
            torch.zeros((0, 1, config.size, config.size))

    # -- files -----------------------------------------------------------------------------------
    def _file_name(self, row) -> str:
        cfg = self.config
        fields = {"id": row["id"], "band": str(row["band"]).lower(), "BAND": str(row["band"]).upper(),
                  "object": row["object"], "cluster": row["cluster"] if "cluster" in row.colnames else "",
                  "field": row["field"] if "field" in row.colnames else ""}
        try:
            return cfg.pattern().format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise DataError(f"data.file_pattern '{cfg.pattern()}' is invalid ({type(exc).__name__}: {exc}); use the "
                            f"fields {{id}}, {{cluster}}, {{field}}, {{band}}, {{BAND}}, {{object}}") from None

    def _check_files(self, table: Table) -> Table:
        cfg = self.config
        if cfg.stamps_dir is None:
            raise DataError(f"data set 'clash_votes' needs the FITS stamps: set data.stamps_dir to the folder holding "
                            f"them (file names '{cfg.pattern()}'); the labels file has no images")
        root = Path(cfg.stamps_dir).expanduser()
        if not root.is_dir():
            raise DataError(f"data.stamps_dir '{root}' is not a folder; point it at the folder of FITS stamps")
        present = np.array([(root / f).is_file() for f in table["file"]], dtype=bool)
        if present.all():
            return table
        missing = np.asarray(table["file"])[~present]
        first = ", ".join(missing[:3])
        msg = (f"{len(missing)} of {len(table)} stamps of the {self.split} split are missing in '{root}' (e.g. {first}"
               f"{' ...' if len(missing) > 3 else ''})")
        if cfg.missing == "error":
            raise DataError(f"{msg}; put the FITS stamps there, fix data.file_pattern (now '{cfg.pattern()}'), or set "
                            f"data.missing: drop")
        if present.sum() == 0:
            raise DataError(f"{msg}: none is left with data.missing: drop; put the FITS stamps there or fix "
                            f"data.file_pattern (now '{cfg.pattern()}')")
        log.warning("%s; dropping them (data.missing: drop)", msg)
        return table[present]

    def _load_images(self, table: Table) -> tuple[np.ndarray, list[dict]]:
        cfg = self.config
        root = Path(cfg.stamps_dir).expanduser()
        files = [root / f for f in table["file"]]
        if not files:
            return np.zeros((0, cfg.size, cfg.size), np.float32), []
        from astrotl.datasets.common import cache_key, file_stamp

        key = cache_key("clash_votes", 1, [file_stamp(f) for f in files], list(table["band"]), cfg.size, cfg.hdu,
                        cfg.check_filter)
        npz = Path(self.cache_dir) / "clash_votes" / f"{key}.npz"
        if cfg.cache and npz.is_file():
            try:
                with np.load(npz, allow_pickle=False) as z:
                    images = z["images"]
                    metas = [dict(stamp_nx=int(a), stamp_ny=int(b), pixel_scale=float(c), exptime=float(d), bunit=str(e))
                             for a, b, c, d, e in zip(z["nx"], z["ny"], z["scale"], z["exptime"], z["bunit"])]
                if images.shape == (len(files), cfg.size, cfg.size):
                    return images, metas
            except Exception as exc:  # noqa: BLE001 -- a bad cache entry is rebuilt
                log.warning("rebuilding stamp cache %s: %s", npz.name, exc)
        images = np.empty((len(files), cfg.size, cfg.size), dtype=np.float32)
        metas = []
        for i, (f, band) in enumerate(zip(files, table["band"])):
            images[i], meta = read_stamp(f, hdu=cfg.hdu, size=cfg.size, band=str(band), check_filter=cfg.check_filter)
            metas.append(meta)
        if cfg.cache:
            from astrotl.io import atomic_path

            try:
                with atomic_path(npz) as tmp:
                    with open(tmp, "wb") as fh:
                        np.savez(fh, images=images, nx=[m["stamp_nx"] for m in metas],
                                 ny=[m["stamp_ny"] for m in metas], scale=[m["pixel_scale"] for m in metas],
                                 exptime=[m["exptime"] for m in metas], bunit=np.array([m["bunit"] for m in metas], str))
            except OSError as exc:
                log.warning("could not cache the stamps in %s: %s", npz.parent, exc)
        return images, metas

    def info(self) -> DatasetInfo:
        bands = sorted(set(np.asarray(self._catalog["band"]).tolist())) if len(self) else []
        return DatasetInfo(bands=CHANNEL, targets=CLASSES, image_size=self.config.size,
                           extra={"band_per_sample": True, "filters": bands, "domain": self.config.domain})
