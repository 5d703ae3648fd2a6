"""`astrotl predict RUN1 RUN2 ...`: one pass over the stamps for every member, members checked before any work,
DataLoader workers, and chunks for job arrays (`--chunk i/n`, `--merge`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.table import Table

pytestmark = pytest.mark.slow  # a training run and a painted mosaic (~1-2 min), then seconds per test


def perturbed_copy(run: Path, dest: Path, *, seed: int = 1, meta: dict | None = None, data: dict | None = None) -> Path:
    """A copy of a finished run with other head weights (another ensemble member), and optionally other metadata
    in model.safetensors or another data section in config.resolved.yaml."""
    import json

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.copytree(run, dest)
    f = dest / "model.safetensors"
    with safe_open(str(f), framework="pt") as fh:
        metadata = dict(fh.metadata())
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    gen = torch.Generator().manual_seed(seed)
    for k, v in state.items():
        if k.startswith("1.") and v.is_floating_point():  # the head of Sequential(backbone, head)
            state[k] = v + 0.5 * v.std() * torch.randn(v.shape, generator=gen)
    for k, v in (meta or {}).items():
        metadata[k] = json.dumps(v)
    save_file(state, str(f), metadata=metadata)
    if data:
        cfg = yaml.safe_load((dest / "config.resolved.yaml").read_text())
        cfg["data"] = {**cfg["data"], **data}
        (dest / "config.resolved.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def members(tmp_path_factory, _cache_dir):
    from astrotl.cli import main
    from testutils import TINY

    d = tmp_path_factory.mktemp("ens")
    p = d / "a.yaml"
    p.write_text(yaml.safe_dump(dict(TINY, name="a", output_dir=str(d / "runs"))))
    assert main(["-q", "run", str(p)]) == 0
    a = d / "runs" / "a"
    b = perturbed_copy(a, d / "runs" / "b", seed=1)
    c = perturbed_copy(a, d / "runs" / "c", seed=2)
    mosaic = d / "mosaic"
    assert main(["-q", "phangs-mosaic", str(mosaic), "--n-sources", "30", "--shape", "300", "300"]) == 0
    return {"a": a, "b": b, "c": c, "dir": d, "data": mosaic / "data_catalog_cutouts.yaml"}


def test_one_pass_ensemble_equals_the_members_run_alone(cli, members, tmp_path, monkeypatch):
    from astrotl.ensemble import combine_predictions
    from astrotl.fitsio import MosaicStack

    alone = {}
    for name in ("a", "b", "c"):
        out = tmp_path / f"{name}.ecsv"
        code, _, err = cli("predict", members[name], "--data", members["data"], "--out", out)
        assert code == 0, err
        alone[name] = Table.read(out)
    cut = []
    original = MosaicStack.cutouts
    monkeypatch.setattr(MosaicStack, "cutouts", lambda self, x, *a, **k: cut.append(np.shape(x)[-1]) or
                        original(self, x, *a, **k))
    out = tmp_path / "ens.ecsv"
    code, stdout, err = cli("predict", members["a"], members["b"], members["c"], "--data", members["data"],
                            "--out", out, "--batch-size", "8")
    assert code == 0, err
    ens = Table.read(out)
    n = len(alone["a"])
    assert sum(cut) == n  # every stamp cut once (in batches of 8), not once per member
    assert list(ens["id"]) == list(alone["a"]["id"])  # input order
    for name in ("a", "b", "c"):
        assert list(ens[f"class_{name}"].astype(int).astype(str)) == list(alone[name]["pred_class"])
    ref = combine_predictions([alone[k] for k in "abc"], ["a", "b", "c"])  # the two-step ensemble
    pos = np.searchsorted(np.asarray(ref["id"]), np.asarray(ens["id"]))
    for col in ("class_mean", "class_median", "class_std", "class_mode", "quality_factor", "n_mode", "p_1_mean"):
        np.testing.assert_allclose(np.asarray(ens[col], dtype=float), np.asarray(ref[col][pos], dtype=float),
                                   atol=1e-6, err_msg=col)
    assert len(set(ens["quality_factor"])) > 1  # the members disagree somewhere
    assert {"ra", "dec", "flag_edge", "nan_fraction"} <= set(ens.colnames)
    assert ens.meta["astrotl_run"] == [str(members[k]) for k in "abc"] and ens.meta["ensemble"]["members"] == list("abc")


@pytest.mark.parametrize("what,change,match", [
    ("bands", {"meta": {"bands": ["F275W", "F336W", "F438W", "F555W", "F658N"]}}, r"differ in bands: .* has \['F275W'"),
    ("classes", {"meta": {"classes": ["1", "2", "3", "5"]}}, r"differ in classes"),
    ("size", {"meta": {"image_size": 32}}, r"differ in stamp size: '.*' has 16, '.*' has 32"),
    ("data", {"data": {"size": 20}}, r"read different data: data.size differ"),
])
def test_members_that_differ_are_refused_before_any_work(cli, members, tmp_path, monkeypatch, what, change, match):
    import re

    from astrotl.datasets.cutouts import CatalogCutoutDataset

    odd = perturbed_copy(members["a"], tmp_path / f"odd_{what}", **change)
    built = []
    monkeypatch.setattr(CatalogCutoutDataset, "__init__", lambda self, *a, **k: built.append(1) or 1 / 0)
    args = ["predict", members["a"], odd, "--out", tmp_path / "x.ecsv"]
    if what != "data":
        args += ["--data", members["data"]]
    code, _, err = cli(*args)
    assert code == 2 and err.count("\n") == 1 and re.search(match, err), err
    assert built == [] and not (tmp_path / "x.ecsv").exists()


def test_dataloader_workers_give_the_same_catalogue(cli, members, tmp_path):
    outs = []
    for workers in (0, 2):
        out = tmp_path / f"w{workers}.ecsv"
        code, _, err = cli("predict", members["a"], "--data", members["data"], "--out", out, "--batch-size", "8",
                           "--set", f"trainer.num_workers={workers}")
        assert code == 0, err
        outs.append(Table.read(out))
    a, b = outs
    assert a.colnames == b.colnames and list(a["id"]) == list(b["id"])
    assert list(a["pred_class"]) == list(b["pred_class"])
    np.testing.assert_allclose(a["p_1"], b["p_1"], atol=1e-6)
    np.testing.assert_array_equal(a["nan_fraction"], b["nan_fraction"])


def test_chunks_merge_into_the_whole_catalogue(cli, members, tmp_path):
    whole = tmp_path / "whole.ecsv"
    assert cli("predict", members["a"], "--data", members["data"], "--out", whole)[0] == 0
    parts = []
    for i in (3, 1, 2):
        part = tmp_path / f"chunk{i}.{'fits' if i == 2 else 'ecsv'}"  # FITS upper-cases short meta keys
        code, _, err = cli("predict", members["a"], "--data", members["data"], "--chunk", f"{i}/3", "--out", part)
        assert code == 0, err
        parts.append(part)
    t1 = Table.read(tmp_path / "chunk1.ecsv")
    assert t1.meta["chunk"] == "1/3" and t1.meta["chunk_samples"][0] == 0
    merged = tmp_path / "merged.ecsv"
    code, stdout, err = cli("predict", "--merge", *parts, "--out", merged)
    assert code == 0 and "3 chunks merged" in stdout, err
    a, b = Table.read(whole), Table.read(merged)
    assert list(a["id"]) == list(b["id"]) and list(a["pred_class"]) == list(b["pred_class"])
    np.testing.assert_allclose(a["p_2"], b["p_2"], atol=1e-6)
    np.testing.assert_array_equal(a["nan_fraction"], b["nan_fraction"])
    np.testing.assert_array_equal(a["index"], b["index"])  # each sample's number in the data, also in a chunk
    assert "chunk" not in b.meta and b.meta["merged_chunks"] == 3
    # a missing chunk: named with its samples, nothing written
    total = t1.meta["n_samples"]
    code, _, err = cli("predict", "--merge", parts[0], parts[1], "--out", tmp_path / "partial.ecsv")
    assert code == 2 and err.count("\n") == 1 and f"chunk 2/3 (samples {total // 3}-{2 * total // 3 - 1} of {total})" \
        " is missing" in err, err
    assert not (tmp_path / "partial.ecsv").exists()
    code, _, err = cli("predict", "--merge", parts[0], parts[0], "--out", tmp_path / "twice.ecsv")
    assert code == 2 and "given twice" in err
    code, _, err = cli("predict", "--merge", whole, "--out", tmp_path / "nochunk.ecsv")
    assert code == 2 and "is not a chunk catalogue" in err


@pytest.mark.parametrize("chunk,match", [
    ("0/3", r"--chunk 0/3: i must be between 1 and n"),
    ("4/3", r"--chunk 4/3: i must be between 1 and n"),
    ("1-3", r"--chunk '1-3': give i/n"),
    ("a/b", r"--chunk 'a/b': give i/n"),
    ("2/999", r"--chunk 2/999 holds no samples: the data have only \d+; use at most \d+ chunks"),
])
def test_bad_chunk_is_a_one_line_error(cli, members, tmp_path, chunk, match):
    import re

    out = tmp_path / "c.ecsv"
    code, _, err = cli("predict", members["a"], "--data", members["data"], "--chunk", chunk, "--out", out)
    assert code == 2 and err.count("\n") == 1 and re.search(match, err), err
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".ecsv", ".fits"])
def test_blocks_of_any_size_write_the_same_catalogue(cli, members, tmp_path, monkeypatch, suffix):
    """predict writes its output in blocks (memory flat in the catalogue's length): blocks of 7 samples give the
    bytes of one block (same batches), for a single model and for a one-pass ensemble."""
    import astrotl.predict as predict_mod

    for runs, name in (([members["a"]], "one"), ([members["a"], members["b"]], "ens")):
        whole = tmp_path / f"{name}_whole{suffix}"
        assert cli("predict", *runs, "--data", members["data"], "--batch-size", "4", "--out", whole)[0] == 0
        monkeypatch.setattr(predict_mod, "BLOCK_ROWS", 7)
        made, block_table = [], predict_mod._block_table
        monkeypatch.setattr(predict_mod, "_block_table", lambda *a, **k: made.append(a[-2] - a[-3]) or block_table(*a, **k))
        blocks = tmp_path / f"{name}_blocks{suffix}"
        code, _, err = cli("predict", *runs, "--data", members["data"], "--batch-size", "4", "--out", blocks)
        monkeypatch.undo()
        assert code == 0, err
        a = Table.read(whole)
        assert made == [8, 8, 8, 6] and len(a) == 30  # blocks of two batches of 4 (>= 7 samples)
        if name == "one":
            assert list(a["index"]) == list(range(len(a)))
        assert blocks.read_bytes() == whole.read_bytes()
