"""Real images of open and globular clusters from Stellarium's nebula textures.

Debian's ``stellarium-data`` package (the planetarium's data files) ships a few hundred
small images of deep-sky objects, ``usr/share/stellarium/nebulae/default/*.png``, placed on
the sky by ``textures.json`` (RA/Dec of each image's four corners). This module

1. **fetches** them without installing anything: ``apt-get download stellarium-data`` in a
   temporary folder, then only the nebula folder of the package's file tree is unpacked
   (``dpkg-deb --fsys-tarfile`` piped into :mod:`tarfile`; a pure-Python reader of the
   ``.deb`` ar archive when ``dpkg-deb`` is absent) into ``CACHE/stellarium-data/``;
2. **types** every texture: the NGC / IC / Messier designation in its file name (``m13.png``,
   ``n869-884spano.png``, ``ic4756.png``; ``pleiades.png`` is M45) is looked up in OpenNGC
   (the ``pyongc`` package, which ships the OpenNGC database), and kept when OpenNGC calls
   it an open cluster (``OCl``), a globular cluster (``GCl``) or a star cluster with
   nebula (``Cl+N``) *and* its OpenNGC position lies inside the texture's footprint;
3. **builds** an image-folder data set in ``CACHE/clusters/``: ``images/<id>.png`` (alpha
   composited on black, centre-square crop, resized to ``size`` px), ``labels.ecsv`` (one
   row per cluster: ``id``, ``file``, ``class``, ``ongc_type``, positions, field of view,
   image credit ...) and ``skipped.ecsv`` (every other texture and why it was left out).

Command line::

    python -m astrotl_clustertype.stellarium fetch --cache ~/.cache/astrotl/stellarium
    python -m astrotl_clustertype.stellarium build --nebulae DIR --out DIR   # from unpacked textures
    python -m astrotl_clustertype.stellarium count --cache DIR

These are processed colour astrophotographs by many photographers (credited per image in
``textures.json``), of widely varying scale, depth and stretch, often with the sky
background removed for alpha blending; they are **not** DSS2 plates. Check each image's
credit before redistributing the files.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from astrotl.errors import AstrotlError, DataError
from astrotl.io import atomic_path

__all__ = [
    "CLUSTER_TYPES",
    "DEFAULT_CACHE_ENV",
    "PACKAGE",
    "Texture",
    "build_clusters",
    "default_cache",
    "designation_from_filename",
    "extract_nebulae",
    "fetch",
    "fetch_command",
    "main",
    "openngc_lookup",
    "read_textures",
]

log = logging.getLogger(__name__)

#: Debian package with the textures.
PACKAGE = "stellarium-data"
#: Folder of the default nebula textures inside the package's file tree.
NEBULAE_SUBDIR = "usr/share/stellarium/nebulae/default"
#: Environment variable naming the default cache folder.
DEFAULT_CACHE_ENV = "ASTROTL_STELLARIUM_CACHE"
#: Sub-folders of the cache.
EXTRACT_SUBDIR = "stellarium-data"
CLUSTERS_SUBDIR = "clusters"

#: OpenNGC type codes kept, and the class each becomes.
CLUSTER_TYPES: dict[str, str] = {"OCl": "open", "GCl": "globular", "Cl+N": "open"}

#: pyongc's type names -> OpenNGC codes.
_ONGC_CODES = {
    "Open Cluster": "OCl", "Globular Cluster": "GCl", "Star cluster + Nebula": "Cl+N",
    "Association of stars": "*Ass", "Star": "*", "Double star": "**", "Galaxy": "G", "Nebula": "Neb",
    "Planetary Nebula": "PN", "HII Ionized region": "HII", "Emission Nebula": "EmN", "Reflection Nebula": "RfN",
    "Supernova remnant": "SNR", "Dark Nebula": "DrkN", "Galaxy Pair": "GPair", "Galaxy Triplet": "GTrpl",
    "Group of galaxies": "GGroup", "Object of other/unknown type": "Other", "Nova star": "Nova",
    "Duplicated record": "Dup", "Nonexistent object": "NonEx",
}

#: Textures named by a nickname rather than a designation.
ALIASES: dict[str, str] = {"pleiades": "M45"}

_DESIGNATION = (
    (re.compile(r"^m(\d{1,3})(?!\d)"), "M"),
    (re.compile(r"^(?:ngc|n)(\d{1,4})(?!\d)"), "NGC"),
    (re.compile(r"^ic(\d{1,4})(?!\d)"), "IC"),
)


def fetch_command(cache: str | os.PathLike) -> str:
    """The shell command that fills ``cache`` (for error messages)."""
    return f"python -m astrotl_clustertype.stellarium fetch --cache {cache}"


def default_cache() -> Path:
    """``$ASTROTL_STELLARIUM_CACHE``, else ``~/.cache/astrotl/stellarium``."""
    env = os.environ.get(DEFAULT_CACHE_ENV)
    return Path(env).expanduser() if env else Path("~/.cache/astrotl/stellarium").expanduser()


# --------------------------------------------------------------------------------------
# fetch: apt-get download + unpack one folder of the .deb


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise DataError(f"'{cmd[0]}' is not available on this system; download {PACKAGE}_*.deb by other means "
                        f"and pass it with --deb FILE") from None


def download_deb(dest: str | os.PathLike, *, update: bool = False) -> Path:
    """``apt-get download stellarium-data`` into ``dest`` (installs nothing).

    Parameters
    ----------
    dest : path-like
        Folder for the ``.deb`` (created).
    update : bool, optional
        Run ``apt-get update`` first (needs root; only refreshes the package lists).

    Returns
    -------
    pathlib.Path
        The downloaded ``.deb``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if update:
        r = _run(["apt-get", "update"], dest)
        if r.returncode != 0:
            raise DataError(f"'apt-get update' failed ({_last_line(r.stderr)}); run it as root or pass --deb FILE")
    r = _run(["apt-get", "download", PACKAGE], dest)
    debs = sorted(dest.glob(f"{PACKAGE}_*.deb"))
    if r.returncode != 0 or not debs:
        raise DataError(f"'apt-get download {PACKAGE}' failed ({_last_line(r.stderr) or 'no .deb written'}); "
                        f"run 'apt-get update' once (as root, or add --update) or pass a downloaded .deb with --deb")
    return debs[-1]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip() and not ln.startswith("W:")]
    return lines[-1] if lines else ""


def _ar_members(path: Path) -> Iterable[tuple[str, int, int]]:
    """(name, offset, size) of the members of an ar archive (a .deb)."""
    with open(path, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise DataError(f"'{path}' is not a Debian package (no ar header); pass the {PACKAGE}_*.deb file")
        while True:
            header = fh.read(60)
            if len(header) < 60:
                return
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(header[48:58].decode("ascii").strip())
            except ValueError:
                raise DataError(f"'{path}' has a corrupt ar member header; download the .deb again") from None
            yield name, fh.tell(), size
            fh.seek(size + (size % 2), 1)


def _data_tar_stream(deb: Path):
    """A file object streaming the package's file-tree tar (``dpkg-deb --fsys-tarfile`` or pure Python)."""
    if shutil.which("dpkg-deb"):
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        return proc.stdout, proc
    for name, offset, size in _ar_members(deb):
        if name.startswith("data.tar"):
            with open(deb, "rb") as fh:
                fh.seek(offset)
                raw = fh.read(size)
            if name.endswith(".zst"):
                raise DataError(f"'{deb}' stores its files as zstd, which Python cannot read; install dpkg-deb "
                                f"(dpkg) or unpack {NEBULAE_SUBDIR} yourself and use the 'build' command")
            return io.BytesIO(raw), None
    raise DataError(f"'{deb}' has no data.tar member; pass a {PACKAGE}_*.deb file")


def extract_nebulae(deb: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack only :data:`NEBULAE_SUBDIR` of ``deb`` into ``dest`` (atomically).

    Parameters
    ----------
    deb : path-like
        A ``stellarium-data_*.deb``.
    dest : path-like
        Target folder; the textures end up in ``dest/usr/share/stellarium/nebulae/default``.

    Returns
    -------
    pathlib.Path
        The folder holding ``textures.json`` and the PNG files.
    """
    deb, dest = Path(deb), Path(dest)
    if not deb.is_file():
        raise DataError(f"package file '{deb}' does not exist; pass the path of a downloaded {PACKAGE}_*.deb")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    prefix = "./" + NEBULAE_SUBDIR + "/"
    n = 0
    try:
        stream, proc = _data_tar_stream(deb)
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    name = member.name if member.name.startswith("./") else "./" + member.name
                    if not name.startswith(prefix) or not member.isfile():
                        continue
                    member.name = name[2:]
                    tar.extract(member, tmp, filter="data")
                    n += 1
        except tarfile.TarError as exc:
            raise DataError(f"cannot unpack '{deb}' ({exc}); download the package again") from None
        finally:
            if proc is not None:
                proc.stdout.close()
                proc.wait()
        if n == 0 or not (tmp / NEBULAE_SUBDIR / "textures.json").is_file():
            raise DataError(f"'{deb}' has no {NEBULAE_SUBDIR}/textures.json; is it the {PACKAGE} package?")
        info = {"package": PACKAGE, "deb": deb.name, "sha256": _sha256(deb), "files": n,
                "version": deb.name.split("_")[1] if deb.name.count("_") >= 2 else None}
        (tmp / "PROVENANCE.json").write_text(json.dumps(info, indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("unpacked %d files of %s into %s", n, deb.name, dest)
    return dest / NEBULAE_SUBDIR


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# textures.json


@dataclass(frozen=True)
class Texture:
    """One image of ``textures.json``.

    Attributes
    ----------
    file : str
        Image file name, relative to the folder of ``textures.json``.
    ra, dec : float
        Centre of the four corners (deg).
    width_arcmin, height_arcmin : float
        Lengths of the first (bottom) and second (right) edge.
    credit : str
        ``imageCredits.short`` (may be empty).
    corners : tuple of (ra, dec)
        The four corners (deg), RA in [0, 360).
    """

    file: str
    ra: float
    dec: float
    width_arcmin: float
    height_arcmin: float
    credit: str
    corners: tuple[tuple[float, float], ...]


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _sep_deg(ra1, dec1, ra2, dec2) -> float:
    a = _unit(np.asarray(ra1, float), np.asarray(dec1, float))
    b = _unit(np.asarray(ra2, float), np.asarray(dec2, float))
    return float(np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b)), np.dot(a, b))))


def _lenient_json(text: str) -> Any:
    """Stellarium's JSON has numbers like ``-.9794`` and trailing commas; read them anyway."""
    fixed = re.sub(r"(?<=[\[,:\s])(-?)\.(\d)", r"\g<1>0.\2", text)
    fixed = re.sub(r",(\s*[\]}])", r"\1", fixed)
    return json.loads(fixed)


def read_textures(path: str | os.PathLike) -> list[Texture]:
    """Parse a Stellarium ``textures.json`` (nested ``subTiles``).

    Parameters
    ----------
    path : path-like
        The ``textures.json`` file.

    Returns
    -------
    list of Texture
        Every tile with a local ``imageUrl`` and a four-corner ``worldCoords``, in file order.

    Raises
    ------
    DataError
        If the file is missing or is not valid (Stellarium-flavoured) JSON.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"textures file '{p}' does not exist; run {fetch_command('DIR')} or pass the folder "
                        f"holding textures.json")
    try:
        doc = _lenient_json(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"textures file '{p}' is not valid JSON ({exc}); fetch the package again") from None
    out: list[Texture] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            url = node.get("imageUrl")
            wc = node.get("worldCoords")
            if isinstance(url, str) and "://" not in url and isinstance(wc, list) and wc:
                poly = wc[0]
                try:
                    corners = tuple(((float(a) % 360.0), float(d)) for a, d in poly)
                except (TypeError, ValueError):
                    corners = ()
                if len(corners) == 4:
                    ras, decs = np.array([c[0] for c in corners]), np.array([c[1] for c in corners])
                    v = _unit(ras, decs).mean(axis=0)
                    ra = float(np.degrees(math.atan2(v[1], v[0])) % 360.0)
                    dec = float(np.degrees(math.atan2(v[2], math.hypot(v[0], v[1]))))
                    credits = node.get("imageCredits") or {}
                    credit = ""
                    if isinstance(credits, dict):
                        credit = str(next((v for k, v in credits.items() if k.lower() == "short"), ""))
                    out.append(Texture(
                        file=url, ra=ra, dec=dec,
                        width_arcmin=60.0 * _sep_deg(*corners[0], *corners[1]),
                        height_arcmin=60.0 * _sep_deg(*corners[1], *corners[2]),
                        credit=credit, corners=corners))
            for sub in node.get("subTiles", []) or []:
                walk(sub)
        elif isinstance(node, list):
            for sub in node:
                walk(sub)

    walk(doc)
    return out


def designation_from_filename(name: str) -> str | None:
    """NGC / IC / Messier designation in a texture's file name.

    Examples
    --------
    >>> designation_from_filename("m13.png"), designation_from_filename("n869-884spano.png")
    ('M13', 'NGC869')
    >>> designation_from_filename("ic348-dss.png"), designation_from_filename("barnard72.png")
    ('IC348', None)
    """
    stem = Path(name).name.lower()
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    if stem in ALIASES:
        return ALIASES[stem]
    for rx, prefix in _DESIGNATION:
        m = rx.match(stem)
        if m:
            return f"{prefix}{int(m.group(1))}"
    return None


# --------------------------------------------------------------------------------------
# typing with OpenNGC


def openngc_lookup(name: str) -> dict[str, Any] | None:
    """OpenNGC record of ``name`` via ``pyongc``: ``{"id", "type", "ra", "dec", "messier", "common"}``.

    Returns ``None`` for a name OpenNGC does not know. Raises :class:`DataError` when
    ``pyongc`` is not installed.
    """
    try:
        from pyongc import ongc
    except ImportError:
        raise DataError("typing the Stellarium textures needs OpenNGC: pip install pyongc "
                        "(or pass lookup= a function returning {'id', 'type', 'ra', 'dec'})") from None
    try:
        dso = ongc.Dso(name)
    except Exception:  # noqa: BLE001 - pyongc raises ObjectNotFound / ValueError for unknown names
        return None
    ra, dec = (float(np.degrees(v)) for v in dso.rad_coords)
    ids = dso.identifiers
    messier = ids[0] if ids and ids[0] else ""
    if messier.startswith("M"):
        messier = f"M{int(messier[1:])}"
    common = ids[3] if len(ids) > 3 and ids[3] else []
    return {"id": dso.name, "type": _ONGC_CODES.get(dso.type, dso.type), "ra": ra, "dec": dec,
            "messier": messier, "common": common[0] if common else ""}


# --------------------------------------------------------------------------------------
# build the image-folder data set


_LABEL_COLUMNS = ("id", "file", "class", "ongc_type", "subtype", "designation", "messier", "common_name", "ra",
                  "dec", "texture", "texture_ra", "texture_dec", "sep_arcmin", "fov_arcmin", "texture_width_px",
                  "texture_height_px", "credit")


def _load_rgb(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(bg, im)
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read texture '{path}' ({type(exc).__name__}); fetch the package again") from None


def build_clusters(nebulae_dir: str | os.PathLike, out_dir: str | os.PathLike, *, size: int = 256,
                   lookup: Callable[[str], dict[str, Any] | None] | None = None,
                   types: Iterable[str] = tuple(CLUSTER_TYPES)) -> Table:
    """Type the textures of ``nebulae_dir`` and write the cluster data set into ``out_dir``.

    Parameters
    ----------
    nebulae_dir : path-like
        Folder with ``textures.json`` and the PNG files.
    out_dir : path-like
        Output folder: ``images/<id>.png``, ``labels.ecsv``, ``skipped.ecsv``.
    size : int, optional
        Side of the written images (centre-square crop, then resized).
    lookup : callable, optional
        ``name -> {"id", "type", "ra", "dec", ...} or None``; default :func:`openngc_lookup`.
    types : iterable of str, optional
        OpenNGC codes to keep (subset of :data:`CLUSTER_TYPES`).

    Returns
    -------
    astropy.table.Table
        The labels table (also written to ``labels.ecsv``).
    """
    from PIL import Image

    src, out = Path(nebulae_dir), Path(out_dir)
    types = tuple(types)
    bad = [t for t in types if t not in CLUSTER_TYPES]
    if bad or not types:
        raise DataError(f"types={list(types)} is invalid: choose from {list(CLUSTER_TYPES)}")
    if not isinstance(size, int) or not 16 <= size <= 4096:
        raise DataError(f"size={size!r} is invalid: give an integer number of pixels in [16, 4096]")
    textures = read_textures(src / "textures.json")
    lookup = lookup or openngc_lookup
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    (out / "images").mkdir(parents=True, exist_ok=True)

    def skip(t: Texture, desig: str | None, reason: str, otype: str = "") -> None:
        skipped.append({"texture": t.file, "designation": desig or "", "ongc_type": otype, "reason": reason})

    for t in textures:
        desig = designation_from_filename(t.file)
        if desig is None:
            skip(t, None, "no NGC/IC/Messier designation in the file name")
            continue
        rec = lookup(desig)
        if rec is None:
            skip(t, desig, "not in OpenNGC")
            continue
        otype = str(rec.get("type", ""))
        if otype not in types:
            skip(t, desig, "not a cluster type kept", otype)
            continue
        sep = 60.0 * _sep_deg(rec["ra"], rec["dec"], t.ra, t.dec)
        half_diag = 0.5 * math.hypot(t.width_arcmin, t.height_arcmin)
        if sep > half_diag:
            skip(t, desig, f"catalogue position {sep:.1f} arcmin from the texture centre, outside it", otype)
            continue
        oid = str(rec["id"])
        if oid in seen:
            skip(t, desig, f"duplicate of {seen[oid]}", otype)
            continue
        path = src / t.file
        if not path.is_file():
            skip(t, desig, "image file missing", otype)
            continue
        im = _load_rgb(path)
        w, h = im.size
        side = min(w, h)
        x0, y0 = (w - side) // 2, (h - side) // 2
        im = im.crop((x0, y0, x0 + side, y0 + side))
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.LANCZOS)
        rel = f"images/{oid}.png"
        with atomic_path(out / rel) as tmp:
            im.save(tmp, format="PNG")
        seen[oid] = t.file
        rows.append({
            "id": oid, "file": rel, "class": CLUSTER_TYPES[otype], "ongc_type": otype,
            "subtype": "nebulous" if otype == "Cl+N" else "", "designation": desig,
            "messier": str(rec.get("messier", "") or ""), "common_name": str(rec.get("common", "") or ""),
            "ra": float(rec["ra"]), "dec": float(rec["dec"]), "texture": t.file, "texture_ra": t.ra,
            "texture_dec": t.dec, "sep_arcmin": sep, "fov_arcmin": t.width_arcmin * side / w,
            "texture_width_px": w, "texture_height_px": h, "credit": t.credit,
        })
    labels = Table(rows=[[r[c] for c in _LABEL_COLUMNS] for r in rows] if rows else None,
                   names=_LABEL_COLUMNS if rows else None)
    if not rows:
        labels = Table({c: np.zeros(0, dtype=float if c in ("ra", "dec") else str) for c in _LABEL_COLUMNS})
    for c, unit in (("ra", "deg"), ("dec", "deg"), ("texture_ra", "deg"), ("texture_dec", "deg"),
                    ("sep_arcmin", "arcmin"), ("fov_arcmin", "arcmin")):
        labels[c].unit = unit
    labels.meta.update({
        "source": f"Debian {PACKAGE}: {NEBULAE_SUBDIR}", "typing": "OpenNGC (pyongc) type of the NGC/IC/Messier "
        "designation in the texture file name; position checked inside the texture",
        "classes": ["open", "globular"], "types_kept": list(types), "size": size,
        "note": "processed colour astrophotographs of varying scale, not DSS2 plates; check each credit "
                "before redistributing",
    })
    prov = src.parents[len(Path(NEBULAE_SUBDIR).parts) - 1] / "PROVENANCE.json" \
        if len(src.parents) >= len(Path(NEBULAE_SUBDIR).parts) else None
    if prov is not None and prov.is_file():
        labels.meta["provenance"] = json.loads(prov.read_text())
    with atomic_path(out / "labels.ecsv") as tmp:
        labels.write(tmp, format="ascii.ecsv", overwrite=True)
    sk = Table(rows=[[s[c] for c in ("texture", "designation", "ongc_type", "reason")] for s in skipped],
               names=("texture", "designation", "ongc_type", "reason")) if skipped else \
        Table({c: np.zeros(0, dtype=str) for c in ("texture", "designation", "ongc_type", "reason")})
    with atomic_path(out / "skipped.ecsv") as tmp:
        sk.write(tmp, format="ascii.ecsv", overwrite=True)
    counts = {k: int((labels["ongc_type"] == k).sum()) for k in types}
    log.info("stellarium clusters: %s from %d textures (%d skipped)", counts, len(textures), len(skipped))
    return labels


def fetch(cache: str | os.PathLike | None = None, *, deb: str | os.PathLike | None = None, size: int = 256,
          update: bool = False, lookup: Callable[[str], dict[str, Any] | None] | None = None) -> Table:
    """Download ``stellarium-data`` (unless ``deb`` is given), unpack its textures and build the data set.

    Parameters
    ----------
    cache : path-like, optional
        Cache folder (default :func:`default_cache`); gets ``stellarium-data/`` and ``clusters/``.
    deb : path-like, optional
        An already downloaded ``stellarium-data_*.deb``; skips ``apt-get download``.
    size : int, optional
        Side of the written cluster images.
    update : bool, optional
        Run ``apt-get update`` before downloading (root only).
    lookup : callable, optional
        Typing function (default :func:`openngc_lookup`).

    Returns
    -------
    astropy.table.Table
        The labels table of ``cache/clusters``.
    """
    if lookup is None:
        openngc_lookup("M13")  # fail early (before the 250 MB download) when pyongc is missing
    cache = Path(cache).expanduser() if cache is not None else default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="astrotl-stellarium-") as tmp:
        path = Path(deb) if deb is not None else download_deb(tmp, update=update)
        nebulae = extract_nebulae(path, cache / EXTRACT_SUBDIR)
    return build_clusters(nebulae, cache / CLUSTERS_SUBDIR, size=size, lookup=lookup)


def _counts(labels: Table) -> str:
    t = labels["ongc_type"]
    parts = [f"{int((t == k).sum())} {k}" for k in CLUSTER_TYPES]
    cls = labels["class"]
    return (f"{len(labels)} cluster images: {int((cls == 'open').sum())} open, {int((cls == 'globular').sum())} "
            f"globular ({', '.join(parts)})")


def main(argv: list[str] | None = None) -> int:
    """Command line: ``fetch``, ``build`` and ``count`` (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m astrotl_clustertype.stellarium",
                                 description="Real open/globular cluster images from Debian's stellarium-data.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="apt-get download stellarium-data, unpack its nebula textures, build the set")
    f.add_argument("--cache", default=None, help=f"cache folder (default ${DEFAULT_CACHE_ENV} or "
                                                 f"~/.cache/astrotl/stellarium)")
    f.add_argument("--deb", default=None, help="use this downloaded stellarium-data_*.deb instead of apt-get")
    f.add_argument("--update", action="store_true", help="run apt-get update first (root)")
    f.add_argument("--size", type=int, default=256, help="side of the written images in px (default 256)")
    b = sub.add_parser("build", help="build the cluster set from an unpacked nebulae folder")
    b.add_argument("--nebulae", required=True, help="folder holding textures.json")
    b.add_argument("--out", required=True, help="output folder (images/, labels.ecsv, skipped.ecsv)")
    b.add_argument("--size", type=int, default=256, help="side of the written images in px (default 256)")
    c = sub.add_parser("count", help="print the numbers of open and globular cluster images in a cache")
    c.add_argument("--cache", default=None, help="cache folder")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "fetch":
            labels = fetch(args.cache, deb=args.deb, size=args.size, update=args.update)
        elif args.cmd == "build":
            labels = build_clusters(args.nebulae, args.out, size=args.size)
        else:
            cache = Path(args.cache).expanduser() if args.cache else default_cache()
            path = cache / CLUSTERS_SUBDIR / "labels.ecsv"
            if not path.is_file():
                raise DataError(f"no cluster set in '{cache}'; run {fetch_command(cache)}")
            labels = Table.read(path, format="ascii.ecsv")
    except AstrotlError as exc:  # one line, like astrotl's own commands
        print(f"{ap.prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(_counts(labels))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
