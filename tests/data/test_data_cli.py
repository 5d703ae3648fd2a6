"""End to end: `astrotl cutouts` and `astrotl run` on catalog_cutouts / image_folder, and bad input -> exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import make_fits
import pytest
from astropy.table import Table
from data_helpers import REPO, require_shared

from astrotl.cli import main


def run_cli(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def cutouts_args(mosaic, out, *extra):
    images = [f"--image={b}={p}" for b, p in mosaic["images"].items()]
    return ["-q", "cutouts", *images, "--hdu", "SCI", "--catalog", mosaic["catalog"], "--size", "8",
            "--label-col", "cls", "--out", str(out), *extra]


def test_cutouts_command(mosaic, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ASTROTL_CACHE_DIR", str(tmp_path / "cache"))
    rc, out, err = run_cli(cutouts_args(mosaic, tmp_path / "cuts"), capsys)
    assert rc == 0, err
    assert "wrote 32 cutouts (0 already there) of 5 bands" in out and "outside 1, edge 3, nan 4, missing_band 2" in out
    index = Table.read(tmp_path / "cuts" / "index.ecsv")
    assert len(index) == 32 and len(list((tmp_path / "cuts").glob("*.fits"))) == 32
    rc, out, err = run_cli(cutouts_args(mosaic, tmp_path / "cuts", "--drop", "outside"), capsys)
    assert rc == 0 and "wrote 0 cutouts (31 already there)" in out


def test_cutouts_command_from_task_file(mosaic, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ASTROTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ASTROTL_SMOKE_DATA", str(Path(mosaic["images"]["F555W"]).parent))
    (tmp_path / "cat").mkdir()
    # the smoke task expects the catalogue next to the mosaics
    Table.read(mosaic["catalog"]).write(Path(mosaic["images"]["F555W"]).parent / "catalog.ecsv")
    rc, out, err = run_cli(["-q", "cutouts", "--task", str(REPO / "tasks/smoke/cutouts_tiny.yaml"), "--set", "size=6",
                            "--limit", "3", "--out", str(tmp_path / "c")], capsys)
    assert rc == 0, err
    assert "wrote 3 cutouts" in out and "6x6 px" in out


def _copy(path, tmp_path):
    import shutil

    dest = tmp_path / ("copy_" + Path(path).name)
    shutil.copyfile(path, dest)
    return dest


def _bad_inputs(mosaic, tmp_path):
    """name -> (extra CLI args, expected error text)."""
    t = Table.read(mosaic["catalog"])
    t["id"][3] = t["id"][2]
    t.write(tmp_path / "dup.ecsv")
    far = Table.read(mosaic["catalog"])
    far["x"] += 1e4
    far.write(tmp_path / "far.ecsv")
    nowcs = make_fits.make_mosaic(tmp_path / "nowcs", bands=("V",), with_wcs=False)["V"]
    return {
        "missing band": (["--image", f"F999W={tmp_path / 'gone.fits'}"], "band F999W: FITS file"),
        "corrupt": (["--image", f"BAD={make_fits.garbage(tmp_path / 'bad.fits')}"], "not a readable FITS file"),
        "truncated": (["--image", f"TR={make_fits.truncate(mosaic['images']['F555W'], tmp_path / 'tr.fits')}"],
                      "is truncated"),
        "no wcs": (["--image", f"V={nowcs}", "--coords", "sky"], "no celestial WCS"),
        "outside": (["--catalog", str(tmp_path / "far.ecsv")], "falls on the images"),
        "duplicate ids": (["--catalog", str(tmp_path / "dup.ecsv")], "duplicated id"),
        "band list": (["--set", "mag_cols=mag_{band}", "--image", f"F435W={_copy(mosaic['images']['F438W'], tmp_path)}"],
                      "have no magnitude column"),
        "band twice": (["--image", f"F555W={mosaic['images']['F814W']}"], "band F555W is given twice"),
        "same image for two bands": (["--image", f"F435W={mosaic['images']['F438W']}"], "a band given twice"),
        "pattern escapes": (["--pattern", "../x_{id}.fits"], "must give a plain file name inside --out"),
        "pattern without id": (["--pattern", "x.fits"], "neither {id} nor {index}"),
        "pattern unknown field": (["--pattern", "{name}.fits"], "only {id} and {index} can be used"),
        "bad hdu": (["--hdu", "SCIENCE"], "no HDU named 'SCIENCE'"),
        "bad option": (["--set", "sise=3"], "unknown key 'data.sise'"),
    }


@pytest.mark.parametrize("case", ["missing band", "corrupt", "truncated", "no wcs", "outside", "duplicate ids",
                                  "band list", "bad hdu", "bad option", "band twice", "same image for two bands",
                                  "pattern escapes", "pattern without id", "pattern unknown field"])
def test_cutouts_bad_input_exit_2_one_line(mosaic, tmp_path, capsys, monkeypatch, case):
    monkeypatch.setenv("ASTROTL_CACHE_DIR", str(tmp_path / "cache"))
    extra, message = _bad_inputs(mosaic, tmp_path)[case]
    out_dir = tmp_path / "cuts"
    rc, out, err = run_cli(cutouts_args(mosaic, out_dir, *extra), capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("astrotl: error: "), err
    assert message in lines[0]
    assert not out_dir.exists()  # nothing written before the check


def _env(tmp_path, **extra):
    env = dict(os.environ, ASTROTL_CACHE_DIR=str(tmp_path / "cache"), **extra)
    return env


@pytest.mark.slow
def test_run_cutouts_smoke_end_to_end(tmp_path):
    data = tmp_path / "smoke"
    make_fits.make_mosaic(data)
    make_fits.make_catalog(data / "catalog.ecsv")
    proc = subprocess.run([sys.executable, "-m", "astrotl", "-q", "run", str(REPO / "tasks/smoke/cutouts_tiny.yaml"),
                           "--set", f"output_dir={tmp_path / 'runs'}"], capture_output=True, text=True,
                          env=_env(tmp_path, ASTROTL_SMOKE_DATA=str(data)), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    preds = Table.read(tmp_path / "runs" / "cutouts_tiny" / "predictions.ecsv")
    assert {"id", "ra", "dec", "flag_edge", "flag_nan", "flag_missing_band", "mag_F555W", "pred_class"} <= set(preds.colnames)


def test_run_bad_input_exit_2_no_run_dir(tmp_path, capsys, monkeypatch):
    data = tmp_path / "smoke"
    make_fits.make_mosaic(data)
    make_fits.make_catalog(data / "catalog.ecsv")
    make_fits.truncate(data / "mosaic_f336w.fits", data / "trunc.fits")
    monkeypatch.setenv("ASTROTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ASTROTL_SMOKE_DATA", str(data))
    rc, out, err = run_cli(["run", str(REPO / "tasks/smoke/cutouts_tiny.yaml"), "--set", f"output_dir={tmp_path / 'runs'}",
                            "--set", f"data.images.F336W={data / 'trunc.fits'}"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("astrotl: error: band F336W: FITS file") and "truncated" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.shared
def test_run_gz1_tiny_end_to_end(tmp_path):
    root = require_shared()
    proc = subprocess.run([sys.executable, "-m", "astrotl", "-q", "run", str(REPO / "tasks/smoke/gz1_tiny.yaml"),
                           "--set", f"output_dir={tmp_path / 'runs'}"], capture_output=True, text=True,
                          env=_env(tmp_path, ASTROTL_SHARED_DATA=str(root)), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    metrics = json.loads((tmp_path / "runs" / "gz1_tiny" / "metrics.json").read_text())["metrics"]
    assert "test_balanced_accuracy" in metrics and "test_macro_f1" in metrics
    assert (tmp_path / "runs" / "gz1_tiny" / "tables" / "per_class.ecsv").is_file()
