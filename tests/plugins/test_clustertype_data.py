"""Tests of the clustertype data sets and of the Stellarium texture fetcher (astrotl_clustertype).

The Stellarium tests run on a tiny fake ``textures.json``, tiny PNGs and a tiny fake ``.deb``
written here; the one test that needs the real cache (``python -m astrotl_clustertype.stellarium
fetch``) is skipped when it is absent.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.table import Table
from PIL import Image
from pydantic import ValidationError

from astrotl.errors import DataError
from astrotl.plugins import load_registries
from astrotl_clustertype import stellarium as stel
from astrotl_clustertype.dataset import (
    PLATE_MEAN,
    PLATE_STD,
    ClustertypeSimConfig,
    ClustertypeSimDataset,
    ClustertypeStellariumConfig,
    ClustertypeStellariumDataset,
    normalize_plates,
)

TINY_SIM = dict(n_train=12, n_val=4, n_test=4, size=32)


# -- simulated data set --------------------------------------------------------------------


def _sim(split="train", cache=None, **kw):
    return ClustertypeSimDataset(ClustertypeSimConfig(**{**TINY_SIM, **kw}), split=split, seed=0, cache_dir=cache)


def test_registered():
    regs = load_registries()
    assert regs.of("datasets").get("clustertype_sim") is ClustertypeSimDataset
    assert regs.of("datasets").get("clustertype_stellarium") is ClustertypeStellariumDataset
    assert regs.of("datasets").plugin_of("clustertype_sim") == "clustertype"


def test_sim_dataset_samples_and_splits(tmp_path):
    train = _sim("train", tmp_path)
    assert len(train) == 12
    s = train[3]
    assert set(s) == {"image", "label", "index"}
    assert s["image"].dtype == torch.float32 and s["image"].shape == (1, 32, 32)
    assert s["label"] in (0, 1) and s["index"] == 3
    assert train.labels().dtype == np.int64 and list(train.labels()) == list(train.catalog()["cls"])
    info = train.info()
    assert info.classes == ("open", "globular") and info.bands == ("DSS2_red",) and info.image_size == 32
    assert len(train.catalog()) == 12 and "subtype" in train.catalog().colnames
    val, test, pred = _sim("val", tmp_path), _sim("test", tmp_path), _sim("predict", tmp_path)
    assert (len(val), len(test), len(pred)) == (4, 4, 4)
    assert not torch.equal(val.raw_images(), test.raw_images())  # independent seeds per split
    assert not torch.equal(test.raw_images(), pred.raw_images())
    # the second construction is a cache hit and gives the same images
    t0 = time.perf_counter()
    again = _sim("train", tmp_path)
    assert time.perf_counter() - t0 < 2.0
    assert torch.equal(again.raw_images(), train.raw_images())
    # another simulation seed gives other images
    assert not torch.equal(_sim("train", tmp_path, seed=1).raw_images(), train.raw_images())


def test_sim_normalisation_modes(tmp_path):
    raw = _sim("val", tmp_path, normalize="none").raw_images().numpy()
    assert raw.min() >= 0 and raw.max() <= 1
    fixed = _sim("val", tmp_path).raw_images().numpy()
    np.testing.assert_allclose(fixed, (raw - PLATE_MEAN) / PLATE_STD, rtol=1e-5, atol=1e-5)
    per_image = _sim("val", tmp_path, normalize="image").raw_images().numpy()
    np.testing.assert_allclose(np.median(per_image, axis=(1, 2, 3)), 0.0, atol=1e-5)
    assert normalize_plates(raw, "none") is not raw


def test_sim_n_test_zero(tmp_path):
    ds = _sim("test", tmp_path, n_test=0)
    assert len(ds) == 0 and len(ds.catalog()) == 0


def test_sim_errors(tmp_path):
    with pytest.raises(DataError, match=r"data \(clustertype_sim\): SimConfig.plate_scale_arcsec=8.0 .*<= pixel_scale"):
        _sim("train", tmp_path, plate_scale_arcsec=8.0, pixel_scale_arcsec=4.0)
    with pytest.raises(DataError, match=r"data \(clustertype_sim\): SimConfig.field_density_range"):
        _sim("train", tmp_path, field_density_range=(0, 3))
    with pytest.raises(ValidationError, match=r"extinction_range must be \(low, high\) with low <= high"):
        ClustertypeSimConfig(extinction_range=(2, 1))
    with pytest.raises(ValidationError, match=r"Extra inputs are not permitted"):
        ClustertypeSimConfig(n_trian=5)
    with pytest.raises(DataError, match=r"normalize='zscore' is not one of fixed, image, none"):
        normalize_plates(np.zeros((1, 1, 4, 4)), "zscore")


# -- fake Stellarium data -----------------------------------------------------------------

# (file, designation, OpenNGC id, type, ra, dec, texture offset in deg)
CLUSTERS = [
    ("m13.png", "M13", "NGC6205", "GCl", 250.423, 36.461, 0.0),
    ("n869-884spano.png", "NGC869", "NGC0869", "OCl", 34.745, 57.134, 0.02),
    ("ic1805.png", "IC1805", "IC1805", "Cl+N", 38.175, 61.45, 0.0),
] + [(f"n{100 + k}.png", f"NGC{100 + k}", f"NGC0{100 + k}", "GCl" if k % 2 else "OCl", 10.0 + 5 * k, -20.0 + k, 0.0)
     for k in range(10)]
LOOKUP = {d: {"id": i, "type": t, "ra": ra, "dec": dec, "messier": d if d.startswith("M") else "", "common": ""}
          for _, d, i, t, ra, dec, _ in CLUSTERS}
LOOKUP.update({
    "M31": {"id": "NGC0224", "type": "G", "ra": 10.68, "dec": 41.27},
    "M2": {"id": "NGC7089", "type": "GCl", "ra": 323.36, "dec": -0.82},
    "M4": {"id": "NGC6121", "type": "GCl", "ra": 245.9, "dec": -26.53},
    "M45": {"id": "Mel022", "type": "OCl", "ra": 56.6, "dec": 24.11},
})


def _tile(file, ra, dec, half=0.15, credit="Tester"):
    # RA of the first corner given as a negative angle (Stellarium does this) to test wrapping
    corners = [[ra + half - 360.0, dec - half], [ra - half, dec - half], [ra - half, dec + half],
               [ra + half, dec + half]]
    return {"imageCredits": {"short": credit}, "imageUrl": file, "worldCoords": [corners],
            "textureCoords": [[[0, 0], [1, 0], [1, 1], [0, 1]]], "minResolution": 0.2, "maxBrightness": 13}


def _png(path: Path, mode: str, size=(40, 30)):
    rng = np.random.default_rng(len(path.name))
    if mode == "RGBA":
        arr = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
        Image.fromarray(arr, "RGBA").save(path)
    elif mode == "P":
        Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8), "L").convert("P").save(
            path, transparency=0)
    else:
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(path)


def write_fake_textures(folder: Path) -> Path:
    """A tiny nebulae folder: textures.json in Stellarium's dialect plus PNGs of varied modes."""
    folder.mkdir(parents=True, exist_ok=True)
    tiles = []
    for k, (f, _, _, _, ra, dec, off) in enumerate(CLUSTERS):
        tiles.append(_tile(f, ra + off, dec))
        _png(folder / f, ("RGBA", "P", "RGB")[k % 3], size=(40 + k, 30))
    tiles += [
        _tile("m31.png", 10.68, 41.27),  # a galaxy
        _tile("barnard72.png", 255.8, -23.6),  # no NGC/IC/Messier designation
        _tile("ngc9999.png", 1.0, 1.0),  # unknown to the catalogue
        _tile("m2.png", 100.0, 10.0),  # footprint far from M2's catalogue position
        _tile("m13-vasey.png", 250.423, 36.461),  # second image of M13
        _tile("m4.png", 245.9, -26.53),  # file missing
        {"imageUrl": "http://example.org/remote.png", "worldCoords": [[[1, 1], [2, 1], [2, 2], [1, 2]]]},
        {"imageUrl": "broken.png", "worldCoords": [[[1, 1], [2, 1]]]},  # not four corners: ignored
        {"shortName": "nested", "subTiles": [_tile("pleiades.png", 56.6, 24.11, credit="")]},
    ]
    for f in ("m31.png", "barnard72.png", "ngc9999.png", "m2.png", "m13-vasey.png", "pleiades.png"):
        _png(folder / f, "RGB")
    text = json.dumps({"shortName": "Nebulae", "minResolution": 0.05, "subTiles": tiles}, indent=1)
    # Stellarium's file has numbers without a leading zero and trailing commas
    text = text.replace('"minResolution": 0.05', '"minResolution": .05').replace('"alphaBlend"', '"x"')
    text = text.replace('"maxBrightness": 13\n', '"maxBrightness": 13,\n', 1)
    (folder / "textures.json").write_text(text)
    return folder


def _tar_bytes(files: dict[str, bytes], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def make_fake_deb(path: Path, nebulae: Path | None, data_name: str = "data.tar.xz") -> Path:
    """An ar archive shaped like a .deb whose data member holds ``nebulae`` under NEBULAE_SUBDIR."""
    files = {}
    if nebulae is not None:
        for f in sorted(nebulae.iterdir()):
            files[f"./{stel.NEBULAE_SUBDIR}/{f.name}"] = f.read_bytes()
    files["./usr/share/doc/stellarium-data/copyright"] = b"fake\n"
    control = _tar_bytes({"./control": b"Package: stellarium-data\nVersion: 0.0-test\nArchitecture: all\n"
                                       b"Maintainer: Test <test@example.org>\nDescription: fake\n"}, "w:gz")
    data = _tar_bytes(files, "w:xz") if data_name.endswith(".xz") else b"\x28\xb5\x2f\xfd" + b"\0" * 16
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, content in (("debian-binary", b"2.0\n"), ("control.tar.gz", control), (data_name, data)):
        out.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n".encode())
        out.write(content + (b"\n" if len(content) % 2 else b""))
    path.write_bytes(out.getvalue())
    return path


@pytest.fixture
def fake_nebulae(tmp_path) -> Path:
    return write_fake_textures(tmp_path / "nebulae")


# -- textures.json and designations --------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("m13.png", "M13"), ("m1dumont.png", "M1"), ("m101-vasey.png", "M101"), ("n869-884spano.png", "NGC869"),
    ("n4038-9.png", "NGC4038"), ("ngc7000.png", "NGC7000"), ("ic348-dss.png", "IC348"), ("IC1805.PNG", "IC1805"),
    ("pleiades.png", "M45"), ("barnard72.png", None), ("mel111.png", None), ("u10214.png", None),
    ("n12345.png", None), ("sh2-106.png", None), ("lmc_01.png", None),
])
def test_designation_from_filename(name, expected):
    assert stel.designation_from_filename(name) == expected


def test_read_textures(fake_nebulae):
    tex = stel.read_textures(fake_nebulae / "textures.json")
    files = [t.file for t in tex]
    assert "http://example.org/remote.png" not in files and "broken.png" not in files
    assert files[0] == "m13.png" and files[-1] == "pleiades.png"  # nested subTiles are read
    m13 = tex[0]
    assert m13.ra == pytest.approx(250.423, abs=1e-3) and m13.dec == pytest.approx(36.461, abs=1e-3)
    assert all(0 <= ra < 360 for ra, _ in m13.corners)
    assert m13.width_arcmin == pytest.approx(18 * np.cos(np.radians(36.31)), rel=0.01)
    assert m13.height_arcmin == pytest.approx(18.0, rel=0.01)
    assert m13.credit == "Tester" and tex[-1].credit == ""


def test_read_textures_errors(tmp_path):
    with pytest.raises(DataError, match=r"textures file '.*nothere.json' does not exist; run python -m "
                                        r"astrotl_clustertype.stellarium fetch"):
        stel.read_textures(tmp_path / "nothere.json")
    bad = tmp_path / "textures.json"
    bad.write_text('{"subTiles": [ {"imageUrl": "a.png", ')
    with pytest.raises(DataError, match=r"textures file '.*textures.json' is not valid JSON"):
        stel.read_textures(bad)


# -- building the cluster set ---------------------------------------------------------------


def test_build_clusters(fake_nebulae, tmp_path):
    out = tmp_path / "clusters"
    labels = stel.build_clusters(fake_nebulae, out, size=24, lookup=LOOKUP.get)
    ids = list(labels["id"])
    assert ids[:3] == ["NGC6205", "NGC0869", "IC1805"] and ids[-1] == "Mel022"
    assert len(labels) == len(CLUSTERS) + 1
    types = dict(zip(labels["id"], labels["ongc_type"]))
    assert types["IC1805"] == "Cl+N" and types["Mel022"] == "OCl"
    cls = dict(zip(labels["id"], labels["class"]))
    assert cls["NGC6205"] == "globular" and cls["NGC0869"] == "open" and cls["IC1805"] == "open"
    assert labels["subtype"][ids.index("IC1805")] == "nebulous"
    assert labels["sep_arcmin"][ids.index("NGC0869")] == pytest.approx(0.02 * 60 * np.cos(np.radians(57.134)),
                                                                       rel=0.02)
    for f in labels["file"]:
        with Image.open(out / f) as im:
            assert im.size == (24, 24) and im.mode == "RGB"
    on_disk = Table.read(out / "labels.ecsv")
    assert len(on_disk) == len(labels) and on_disk["ra"].unit == "deg"
    assert on_disk.meta["types_kept"] == ["OCl", "GCl", "Cl+N"]
    skipped = Table.read(out / "skipped.ecsv")
    reasons = {str(t): str(r) for t, r in zip(skipped["texture"], skipped["reason"])}
    assert reasons["m31.png"] == "not a cluster type kept"
    assert reasons["barnard72.png"] == "no NGC/IC/Messier designation in the file name"
    assert reasons["ngc9999.png"] == "not in OpenNGC"
    assert reasons["m2.png"].startswith("catalogue position") and "outside it" in reasons["m2.png"]
    assert reasons["m13-vasey.png"] == "duplicate of m13.png"
    assert reasons["m4.png"] == "image file missing"
    # only globulars kept
    only = stel.build_clusters(fake_nebulae, tmp_path / "gcl", size=16, lookup=LOOKUP.get, types=["GCl"])
    assert set(only["class"]) == {"globular"}


def test_alpha_is_composited_on_black(tmp_path):
    folder = tmp_path / "neb"
    folder.mkdir()
    arr = np.zeros((20, 20, 4), dtype=np.uint8)
    arr[..., :3] = 255  # white, fully transparent ...
    arr[5:15, 5:15, 3] = 255  # ... except an opaque square
    Image.fromarray(arr, "RGBA").save(folder / "m13.png")
    (folder / "textures.json").write_text(json.dumps({"subTiles": [_tile("m13.png", 250.423, 36.461)]}))
    labels = stel.build_clusters(folder, tmp_path / "out", size=20, lookup=LOOKUP.get)
    img = np.asarray(Image.open(tmp_path / "out" / labels["file"][0]))
    assert img[0, 0].tolist() == [0, 0, 0] and img[10, 10].tolist() == [255, 255, 255]


def test_build_errors(fake_nebulae, tmp_path):
    with pytest.raises(DataError, match=r"types=\['OCl', 'Galaxy'\] is invalid: choose from \['OCl', 'GCl', 'Cl\+N'\]"):
        stel.build_clusters(fake_nebulae, tmp_path / "o", lookup=LOOKUP.get, types=["OCl", "Galaxy"])
    with pytest.raises(DataError, match=r"size=8 is invalid"):
        stel.build_clusters(fake_nebulae, tmp_path / "o", size=8, lookup=LOOKUP.get)
    with pytest.raises(DataError, match=r"textures file .* does not exist"):
        stel.build_clusters(tmp_path / "empty", tmp_path / "o", lookup=LOOKUP.get)
    (fake_nebulae / "m13.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read texture '.*m13.png'.*fetch the package again"):
        stel.build_clusters(fake_nebulae, tmp_path / "o", lookup=LOOKUP.get)


def test_empty_build(tmp_path):
    folder = tmp_path / "neb"
    folder.mkdir()
    (folder / "textures.json").write_text(json.dumps({"subTiles": [_tile("barnard72.png", 1, 1)]}))
    labels = stel.build_clusters(folder, tmp_path / "out", lookup=LOOKUP.get)
    assert len(labels) == 0 and "ongc_type" in labels.colnames
    assert len(Table.read(tmp_path / "out" / "skipped.ecsv")) == 1


# -- unpacking a .deb and the fetch flow ---------------------------------------------------


@pytest.mark.parametrize("tool", ["dpkg-deb", "python"])
def test_extract_nebulae(fake_nebulae, tmp_path, monkeypatch, tool):
    if tool == "dpkg-deb" and not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb not installed")
    if tool == "python":
        monkeypatch.setattr(stel.shutil, "which", lambda name: None)
    deb = make_fake_deb(tmp_path / "stellarium-data_0.0-test_all.deb", fake_nebulae)
    dest = tmp_path / "cache" / "stellarium-data"
    nebulae = stel.extract_nebulae(deb, dest)
    assert nebulae == dest / stel.NEBULAE_SUBDIR
    assert sorted(p.name for p in nebulae.iterdir()) == sorted(p.name for p in fake_nebulae.iterdir())
    assert not (dest / "usr" / "share" / "doc").exists()  # only the nebula folder is unpacked
    prov = json.loads((dest / "PROVENANCE.json").read_text())
    assert prov["version"] == "0.0-test" and prov["package"] == "stellarium-data" and len(prov["sha256"]) == 64
    # a second extraction replaces the first
    assert stel.extract_nebulae(deb, dest) == nebulae
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["stellarium-data"]


def test_extract_errors(fake_nebulae, tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"package file '.*missing.deb' does not exist"):
        stel.extract_nebulae(tmp_path / "missing.deb", tmp_path / "x")
    no_tex = make_fake_deb(tmp_path / "empty.deb", None)
    with pytest.raises(DataError, match=r"has no usr/share/stellarium/nebulae/default/textures.json"):
        stel.extract_nebulae(no_tex, tmp_path / "x")
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"hello world, not an archive at all" * 10)
    monkeypatch.setattr(stel.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match=r"'.*junk.deb' is not a Debian package \(no ar header\)"):
        stel.extract_nebulae(junk, tmp_path / "x")
    zst = make_fake_deb(tmp_path / "zst.deb", fake_nebulae, data_name="data.tar.zst")
    with pytest.raises(DataError, match=r"stores its files as zstd"):
        stel.extract_nebulae(zst, tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_extract_junk_with_dpkg_deb(tmp_path):
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb not installed")
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"hello world, not an archive at all" * 10)
    with pytest.raises(DataError, match=r"cannot unpack '.*junk.deb'"):
        stel.extract_nebulae(junk, tmp_path / "x")


def _fake_apt(deb_source: Path | None, rc: int = 0, stderr: str = ""):
    calls = []

    def run(cmd, cwd=None, **kw):
        calls.append(list(cmd))
        if cmd[:2] == ["apt-get", "download"] and deb_source is not None and rc == 0:
            shutil.copy(deb_source, Path(cwd) / "stellarium-data_0.0-test_all.deb")
        return subprocess.CompletedProcess(cmd, rc, "", stderr)

    return run, calls


def test_fetch_with_apt_get_download(fake_nebulae, tmp_path, monkeypatch):
    deb = make_fake_deb(tmp_path / "src.deb", fake_nebulae)
    run, calls = _fake_apt(deb)
    monkeypatch.setattr(stel.subprocess, "run", run)
    labels = stel.fetch(tmp_path / "cache", size=16, update=True, lookup=LOOKUP.get)
    assert calls == [["apt-get", "update"], ["apt-get", "download", "stellarium-data"]]
    assert len(labels) == len(CLUSTERS) + 1
    assert (tmp_path / "cache" / "clusters" / "labels.ecsv").is_file()
    assert Table.read(tmp_path / "cache" / "clusters" / "labels.ecsv").meta["provenance"]["version"] == "0.0-test"
    # with --deb no apt-get is run
    calls.clear()
    stel.fetch(tmp_path / "cache2", deb=deb, size=16, lookup=LOOKUP.get)
    assert calls == []


def test_download_errors(tmp_path, monkeypatch):
    run, _ = _fake_apt(None, rc=100, stderr="W: something\nE: Unable to locate package stellarium-data\n")
    monkeypatch.setattr(stel.subprocess, "run", run)
    with pytest.raises(DataError, match=r"'apt-get download stellarium-data' failed \(E: Unable to locate package "
                                        r"stellarium-data\); run 'apt-get update' once"):
        stel.download_deb(tmp_path)
    with pytest.raises(DataError, match=r"'apt-get update' failed \(E: Unable to locate"):
        stel.download_deb(tmp_path, update=True)
    run, _ = _fake_apt(None, rc=0)
    monkeypatch.setattr(stel.subprocess, "run", run)
    with pytest.raises(DataError, match=r"failed \(no .deb written\)"):
        stel.download_deb(tmp_path)

    def missing(*a, **k):
        raise FileNotFoundError("apt-get")

    monkeypatch.setattr(stel.subprocess, "run", missing)
    with pytest.raises(DataError, match=r"'apt-get' is not available on this system; .* --deb FILE"):
        stel.fetch(tmp_path / "c", lookup=LOOKUP.get)


def test_openngc_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyongc", None)
    with pytest.raises(DataError, match=r"needs OpenNGC: pip install pyongc"):
        stel.openngc_lookup("M13")
    with pytest.raises(DataError, match=r"pip install pyongc"):
        stel.fetch(tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_openngc_lookup():
    pytest.importorskip("pyongc")
    m13 = stel.openngc_lookup("M13")
    assert m13["id"] == "NGC6205" and m13["type"] == "GCl" and m13["messier"] == "M13"
    assert m13["ra"] == pytest.approx(250.42, abs=0.05) and m13["dec"] == pytest.approx(36.46, abs=0.05)
    assert stel.openngc_lookup("NGC869")["type"] == "OCl"
    assert stel.openngc_lookup("IC1805")["type"] == "Cl+N"
    assert stel.openngc_lookup("NGC99999") is None


def test_cli(fake_nebulae, tmp_path, capsys):
    pytest.importorskip("pyongc")  # the CLI types with OpenNGC
    rc = stel.main(["count", "--cache", str(tmp_path / "none")])
    assert rc == 2 and "no cluster set in" in capsys.readouterr().err
    out = tmp_path / "cache" / "clusters"
    # real catalogue positions for the two real objects; the synthetic NGC1xx entries are skipped or typed
    rc = stel.main(["build", "--nebulae", str(fake_nebulae), "--out", str(out), "--size", "16"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "cluster images:" in printed and "globular" in printed
    assert stel.main(["count", "--cache", str(tmp_path / "cache")]) == 0
    assert capsys.readouterr().out == printed
    rc = stel.main(["build", "--nebulae", str(tmp_path / "nope"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and err.count("\n") == 1
    assert err.startswith("python -m astrotl_clustertype.stellarium: error: "), err  # one line, like astrotl's own


# -- the real-image data set ---------------------------------------------------------------


@pytest.fixture
def fake_cache(fake_nebulae, tmp_path) -> Path:
    cache = tmp_path / "stellarium"
    stel.build_clusters(fake_nebulae, cache / stel.CLUSTERS_SUBDIR, size=24, lookup=LOOKUP.get)
    return cache


def _stel(cache, split="train", cache_dir=None, **kw):
    cfg = ClustertypeStellariumConfig(root=str(cache), size=16, split_fractions=(0.5, 0.25, 0.25), **kw)
    return ClustertypeStellariumDataset(cfg, split=split, seed=0, cache_dir=cache_dir or cache / "ds_cache")


def test_stellarium_dataset(fake_cache):
    n_ocl = sum(1 for c in CLUSTERS if c[3] == "OCl") + 1  # + the Pleiades
    n_gcl = sum(1 for c in CLUSTERS if c[3] == "GCl")
    sizes = {s: len(_stel(fake_cache, s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == n_ocl + n_gcl  # Cl+N left out by default
    pred = _stel(fake_cache, "predict")
    assert len(pred) == len(CLUSTERS) + 1 and (pred.labels() == -1).sum() == 1  # IC 1805 unlabelled
    train = _stel(fake_cache, "train")
    s = train[0]
    assert s["image"].shape == (1, 16, 16) and s["image"].dtype == torch.float32 and s["label"] in (0, 1)
    info = train.info()
    assert info.classes == ("open", "globular") and info.bands == ("L",) and info.extra["simulated"] is False
    cat = train.catalog()
    assert {"id", "class", "ongc_type", "ra", "dec", "fov_arcmin", "credit"} <= set(cat.colnames)
    assert all((c == "globular") == (lab == 1) for c, lab in zip(cat["class"], train.labels()))
    rgb = _stel(fake_cache, "train", color="rgb", include_nebulous=True)
    assert rgb[0]["image"].shape == (3, 16, 16) and rgb.info().bands == ("R", "G", "B")
    all_rows = sum(len(_stel(fake_cache, s, include_nebulous=True)) for s in ("train", "val", "test"))
    assert all_rows == n_ocl + n_gcl + 1
    raw = train.raw_images()
    assert raw.dtype == np.uint8 and raw.shape[1:] == (1, 16, 16)


def test_stellarium_dataset_default_root(fake_cache, monkeypatch, tmp_path):
    monkeypatch.setenv(stel.DEFAULT_CACHE_ENV, str(fake_cache))
    assert stel.default_cache() == fake_cache
    cfg = ClustertypeStellariumConfig(size=16)
    assert len(ClustertypeStellariumDataset(cfg, split="predict", seed=0, cache_dir=tmp_path / "c")) > 0


def test_stellarium_dataset_errors(tmp_path, fake_cache):
    with pytest.raises(DataError, match=r"data \(clustertype_stellarium\): no cluster images in '.*none/clusters'; "
                                        r"run 'python -m astrotl_clustertype.stellarium fetch --cache .*none' first"):
        _stel(tmp_path / "none")
    (fake_cache / "clusters" / "images" / "NGC6205.png").unlink()
    with pytest.raises(DataError, match=r"data \(clustertype_stellarium\): 1 of .* images listed .* are missing"):
        _stel(fake_cache)
    with pytest.raises(ValidationError, match=r"Extra inputs are not permitted"):
        ClustertypeStellariumConfig(rooot="x")


def _real_cache() -> Path | None:
    cache = stel.default_cache()
    return cache if (cache / stel.CLUSTERS_SUBDIR / "labels.ecsv").is_file() else None


@pytest.mark.skipif(_real_cache() is None, reason="no Stellarium cache: run python -m astrotl_clustertype.stellarium "
                                                  "fetch (set ASTROTL_STELLARIUM_CACHE to use another folder)")
def test_real_stellarium_cache(tmp_path, capsys):
    cache = _real_cache()
    labels = Table.read(cache / stel.CLUSTERS_SUBDIR / "labels.ecsv")
    n_open, n_glob = int((labels["ongc_type"] == "OCl").sum()), int((labels["ongc_type"] == "GCl").sum())
    with capsys.disabled():
        print(f"\n[clustertype] real Stellarium cache: {n_open} OCl, {n_glob} GCl, "
              f"{int((labels['ongc_type'] == 'Cl+N').sum())} Cl+N")
    assert n_open >= 30 and n_glob >= 30
    assert "NGC6205" in set(labels["id"])  # M13
    ds = ClustertypeStellariumDataset(ClustertypeStellariumConfig(root=str(cache), size=32), split="predict",
                                      seed=0, cache_dir=tmp_path)
    assert len(ds) == len(labels) and ds[0]["image"].shape == (1, 32, 32)

