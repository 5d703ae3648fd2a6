"""`astrotl predict`: a finished run's model applied to (new) data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.table import Table


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, _cache_dir):
    import yaml

    from astrotl.cli import main
    from testutils import TINY

    d = tmp_path_factory.mktemp("predict")
    cfg = dict(TINY, name="base", output_dir=str(d / "runs"))
    p = d / "base.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "run", str(p)]) == 0
    return d / "runs" / "base"


def test_predict_reproduces_the_runs_test_predictions(cli, finished_run, tmp_path):
    out = tmp_path / "again.ecsv"
    code, stdout, err = cli("predict", finished_run, "--split", "test", "--out", out)
    assert code == 0, err
    a = Table.read(finished_run / "predictions.ecsv")
    b = Table.read(out)
    assert len(a) == len(b)
    assert list(a["pred_class"]) == list(b["pred_class"])
    assert np.allclose(a["p_1"], b["p_1"], atol=1e-5)
    assert b.meta["astrotl_run"] == str(finished_run) and b.meta["bands"][0] == "F275W"


def test_predict_new_data_joins_catalogue(cli, finished_run, tmp_path):
    out = tmp_path / "new.fits"
    code, _, err = cli("predict", finished_run, "--set", "data.seed=7", "--set", "data.n_test=12", "--out", out)
    assert code == 0, err
    t = Table.read(out)
    assert len(t) == 12 and {"id", "x", "y", "mag_F555W", "pred_class", "p_4"} <= set(t.colnames)


def test_predict_refuses_to_overwrite(cli, finished_run, tmp_path):
    out = tmp_path / "x.ecsv"
    out.write_text("keep")
    code, _, err = cli("predict", finished_run, "--out", out)
    assert code == 2 and "already exists" in err and out.read_text() == "keep"


@pytest.mark.parametrize("case", ["not_a_run", "unfinished", "bad_suffix", "bad_override"])
def test_predict_bad_input(cli, finished_run, tmp_path, case):
    import shutil

    if case == "not_a_run":
        args, match = [tmp_path, "--out", tmp_path / "o.ecsv"], "not an astrotl run directory"
    elif case == "unfinished":
        run = tmp_path / "copy"
        shutil.copytree(finished_run, run)
        st = json.loads((run / "run.json").read_text())
        st["status"] = "interrupted"
        (run / "run.json").write_text(json.dumps(st))
        args, match = [run, "--out", tmp_path / "o.ecsv"], "is not finished"
    elif case == "bad_suffix":
        args, match = [finished_run, "--out", tmp_path / "o.txt"], "must end in .ecsv"
    else:
        args, match = [finished_run, "--out", tmp_path / "o.ecsv", "--set", "data.n_tst=3"], "did you mean 'n_test'"
    code, _, err = cli("predict", *args)
    assert code == 2 and match in err and err.count("\n") == 1


def test_predict_on_a_painted_mosaic_and_band_mismatch(cli, finished_run, tmp_path):
    """phangs-mosaic writes FITS + catalogue + a data section; predict classifies them; a band change is refused."""
    mosaic = tmp_path / "mosaic"
    code, _, err = cli("phangs-mosaic", mosaic, "--n-sources", "20", "--shape", "300", "300")
    assert code == 0, err
    out = tmp_path / "classified.ecsv"
    code, _, err = cli("predict", finished_run, "--data", mosaic / "data_catalog_cutouts.yaml", "--out", out)
    assert code == 0, err
    t = Table.read(out)
    assert len(t) >= 15 and {"ra", "dec", "pred_class", "p_1"} <= set(t.colnames)
    import yaml

    doc = yaml.safe_load((mosaic / "data_catalog_cutouts.yaml").read_text())
    doc["data"]["images"].pop("F275W")
    doc["data"].pop("mag_cols", None)
    (tmp_path / "four_bands.yaml").write_text(yaml.safe_dump(doc))
    code, _, err = cli("predict", finished_run, "--data", tmp_path / "four_bands.yaml", "--out", tmp_path / "x.ecsv")
    assert code == 2 and "band mismatch" in err and err.count("\n") == 1
    assert not (tmp_path / "x.ecsv").exists()
    doc = yaml.safe_load((mosaic / "data_catalog_cutouts.yaml").read_text())
    doc["data"]["classes"] = ["1", "2", "3"]
    doc["data"]["class_map"] = {"1": "1", "2": "2", "3": "3"}
    doc["data"].pop("class_descriptions", None)
    (tmp_path / "three_classes.yaml").write_text(yaml.safe_dump(doc))
    code, _, err = cli("predict", finished_run, "--data", tmp_path / "three_classes.yaml", "--out", tmp_path / "y.ecsv")
    assert code == 2 and "class mismatch" in err and err.count("\n") == 1
    assert not (tmp_path / "y.ecsv").exists()
