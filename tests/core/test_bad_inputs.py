"""Bad inputs across every command and data format: exit 2, one line, no traceback, nothing written.

Each case builds its bad input in ``tmp_path``, runs ``astrotl`` in-process and asserts

* exit code 2;
* exactly one stderr line, starting ``astrotl: error:``, matching the case's expected text;
* no traceback;
* the file tree under ``tmp_path`` (and the shared finished run) unchanged -- paths, sizes and
  modification times -- apart from what the case allows (a failed run may leave its folder, never a
  temporary file).

Cases that wait for the engine's side of issue 8 are ``xfail(strict=True, reason="engine: ...")``:
when the engine is fixed they XPASS, which fails the suite until the mark is removed.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import pickle
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from astropy.table import Table

from testutils import REPO, TINY

sys.path.insert(0, str(REPO / "tests" / "data"))
import make_fits  # noqa: E402

SMALL_BACKBONE = {"name": "timm:test_resnet", "weights": "none"}


# -- a finished tiny run shared by the predict / ensemble / weights cases ------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory, _cache_dir) -> Path:
    from astrotl.cli import main

    d = tmp_path_factory.mktemp("bad_inputs_run")
    cfg = dict(TINY, name="done", output_dir=str(d / "runs"), backbone=SMALL_BACKBONE)
    p = d / "done.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["-q", "run", str(p)]) == 0
    return d / "runs" / "done"


# -- the case table -------------------------------------------------------------------------------


@dataclass
class Ctx:
    tmp: Path
    finished: Path
    monkeypatch: pytest.MonkeyPatch

    def task(self, name: str = "t", raw: str | None = None, **sections) -> Path:
        """A tiny task file (TINY + the small backbone, output_dir under tmp) with sections merged in."""
        p = self.tmp / f"{name}.yaml"
        if raw is not None:
            p.write_text(raw)
            return p
        cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
        cfg.update(name=name, output_dir=str(self.tmp / "runs"), backbone=dict(SMALL_BACKBONE))
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict) and not value.pop("_replace", False):
                cfg[key].update(value)
            else:
                cfg[key] = value
        p.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return p

    def fake_run(self, name: str, status: str, ckpt: bytes | None = None) -> Path:
        """An astrotl run directory (as RunDirectory makes it) with a status and maybe a last.ckpt."""
        from astrotl.rundir import RunDirectory

        rd = RunDirectory(self.tmp / "runs" / name)
        rd.prepare(overwrite=False, resume=False)
        rd.write_status(status=status, versions={"astrotl": "0"})
        if ckpt is not None:
            rd.last_checkpoint.write_bytes(ckpt)
        rd.close()
        return rd.path

    def copy_run(self, name: str = "copy") -> Path:
        dest = self.tmp / name
        shutil.copytree(self.finished, dest)
        return dest

    def mosaic(self) -> dict:
        d = self.tmp / "mosaic"
        if not d.is_dir():
            images = make_fits.make_mosaic(d, bands=("F555W", "F814W"))
            cat = make_fits.make_catalog(self.tmp / "cat.ecsv", mags=("F555W", "F814W"))
            self._mosaic = {"images": {b: str(p) for b, p in images.items()}, "catalog": str(cat)}
        return self._mosaic

    def cutout_data(self, **over) -> dict:
        m = self.mosaic()
        return {"name": "catalog_cutouts", "images": dict(m["images"]), "catalog": m["catalog"], "hdu": "SCI",
                "size": 8, "label_col": "cls", "split_fractions": [0.5, 0.25, 0.25], "_replace": True, **over}

    def cutouts_args(self, *extra, out: str = "cuts") -> list:
        m = self.mosaic()
        images = [f"--image={b}={p}" for b, p in m["images"].items()]
        return ["cutouts", *images, "--hdu", "SCI", "--catalog", m["catalog"], "--size", "8",
                "--out", self.tmp / out, *extra]

    def folder(self, n: int = 8) -> Path:
        from PIL import Image

        root = self.tmp / "folder"
        (root / "img").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        rows = []
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / "img" / f"g{i}.png")
            rows.append((i, f"img/g{i}.png", "ab"[i % 2]))
        Table(rows=rows, names=("objid", "file", "label")).write(root / "labels.csv", format="ascii.csv")
        return root

    def folder_data(self, **over) -> dict:
        return {"name": "image_folder", "root": str(self.folder()), "file_col": "file", "_replace": True, **over}

    def write(self, name: str, data: bytes | str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return p

    def weights(self, kind: str) -> Path:
        """A weights file: truncated / garbage safetensors, garbage .pt, a pickle that runs code."""
        from safetensors.torch import save_file

        if kind == "truncated.safetensors":
            save_file({"w": torch.zeros(1000)}, str(self.tmp / "full.safetensors"))
            data = (self.tmp / "full.safetensors").read_bytes()
            (self.tmp / "full.safetensors").unlink()
            return self.write("w_trunc.safetensors", data[: len(data) // 2])
        if kind == "garbage.safetensors":
            return self.write("w_garbage.safetensors", b"\x00\x01not safetensors" * 20)
        if kind == "garbage.pt":
            return self.write("w_garbage.pt", os.urandom(300))
        if kind == "truncated.pt":
            torch.save({"w": torch.zeros(1000)}, self.tmp / "full.pt")
            data = (self.tmp / "full.pt").read_bytes()
            (self.tmp / "full.pt").unlink()
            return self.write("w_trunc.pt", data[: len(data) // 2])
        if kind == "evil.pt":
            return self.write("w_evil.pt", pickle.dumps({"w": _RunsCode()}, protocol=2))
        raise ValueError(kind)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo astrotl-bad-input-test-ran-code",))


@dataclass
class Case:
    id: str
    build: Callable[[Ctx], list]
    match: str
    allowed: tuple[str, ...] = ()
    xfail: str | None = None
    skip: Callable[[], str | None] | None = None
    post: Callable[[Ctx], None] | None = None  # extra checks after the command


CASES: list[Case] = []


def case(id: str, match: str, *, allowed: tuple[str, ...] = (), xfail: str | None = None, skip=None, post=None):
    def deco(fn):
        CASES.append(Case(id, fn, match, allowed, xfail, skip, post))
        return fn
    return deco


def _no_gpu() -> str | None:
    return "this machine has a CUDA GPU" if torch.cuda.is_available() else None


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---- run / validate: task files and config -----------------------------------------------------------

case("run/task file missing", "task file '.*nope.yaml' does not exist")(lambda c: ["run", c.tmp / "nope.yaml"])
case("run/task file is a directory", "is a directory")(lambda c: ["run", c.tmp])
case("run/yaml syntax error", r"YAML syntax error .* line \d+, column \d+")(lambda c: ["run", c.task(raw="name: x\ntask:\n  a: [1, 2\n")])
case("run/empty task file", "is empty")(lambda c: ["run", c.task(raw="")])
case("run/task file is a list", "must be a mapping")(lambda c: ["run", c.task(raw="- a\n- b\n")])
case("run/key given twice", "key 'trainer' is given twice")(
    lambda c: ["run", c.task(raw=c.task().read_text() + "trainer: {max_epochs: 3}\n")])
case("run/unknown backbone", "did you mean 'resnet18'")(
    lambda c: ["run", c.task(backbone={"name": "resnt18", "_replace": True})])
case("run/unknown trainer key", "unknown key 'trainer.max_epoch'")(
    lambda c: ["run", c.task(trainer={"max_epoch": 3})])
case("run/bad value", "bad value 0 for 'trainer.max_epochs'")(lambda c: ["run", c.task(trainer={"max_epochs": 0})])
case("run/--set without =", "is not of the form key.path=value")(lambda c: ["run", c.task(), "--set", "trainer"])
case("run/--set into a value", "is a value, not a section")(lambda c: ["run", c.task(), "--set", "name.x=1"])
case("run/--overwrite with --resume", "not allowed with argument")(
    lambda c: ["run", c.task(), "--overwrite", "--resume"])
case("run/run name escapes output_dir", "use letters, digits")(lambda c: ["run", c.task(), "--set", "name=../evil"])
case("run/unknown task", "did you mean 'phangs_clusters'")(
    lambda c: ["run", c.task(task={"name": "phangs_cluster", "_replace": True})])
case("run/class weights and logit adjustment together", "both correct for class imbalance")(
    lambda c: ["run", c.task(task={"class_weights": "balanced", "logit_adjustment": 1.0})])
case("run/data.classes twice", "data.classes has duplicates")(
    lambda c: ["run", c.task(data=c.folder_data(classes=["a", "b", "a"]))])

# ---- run: the run directory (groups 2, 3, 4, 5) ------------------------------------------------------

case("run/--resume with nothing to resume", "nothing to resume")(lambda c: ["run", c.task(), "--resume"])
case("run/finished run without --overwrite", "already holds a finished run")(
    lambda c: (c.fake_run("t", "finished"), ["run", c.task()])[1])
case("run/unfinished run without --resume", r"holds an unfinished run \(status: interrupted\)")(
    lambda c: (c.fake_run("t", "interrupted"), ["run", c.task()])[1])


@case("run/--overwrite of a user's folder", "is not an astrotl run; .* will not delete it")
def _(c):
    c.write("runs/t/thesis.tex", "my thesis")
    return ["run", c.task(), "--overwrite"]


@case("run/--overwrite of a folder with another tool's run.json", "is not an astrotl run")
def _(c):
    c.write("runs/t/run.json", json.dumps({"status": "finished", "tool": "not astrotl"}))
    c.write("runs/t/results.csv", "precious")
    return ["run", c.task(), "--overwrite"]


@case("run/output_dir from an empty variable", "ASTROTL_TEST_EMPTY is set but empty")
def _(c):
    c.monkeypatch.setenv("ASTROTL_TEST_EMPTY", "")
    return ["run", c.task(output_dir="${ASTROTL_TEST_EMPTY}/astrotl-test-runs")]


case("run/output_dir from an unset variable", "ASTROTL_TEST_UNSET is not set")(
    lambda c: ["run", c.task(output_dir="${ASTROTL_TEST_UNSET}/runs")])
case("run/output_dir is a file", r"output_dir: '.*afile' is a file")(
    lambda c: (c.write("afile", "x"), ["run", c.task(output_dir=str(c.tmp / "afile"))])[1])


@case("run/output_dir is a symlink to a file", r"output_dir: '.*runs' is a file")
def _(c):
    (c.tmp / "runs").symlink_to(c.write("afile", "x"))
    return ["run", c.task()]


@case("run/output path is a broken symlink", "broken symbolic link")
def _(c):
    (c.tmp / "runs").mkdir()
    (c.tmp / "runs" / "t").symlink_to(c.tmp / "nowhere")
    return ["run", c.task()]


case("run/--resume from a truncated last.ckpt", r"checkpoint '.*last.ckpt' is damaged .*--overwrite")(
    lambda c: (c.fake_run("t", "interrupted", ckpt=(c.finished / "checkpoints" / "last.ckpt").read_bytes()[:3000]),
               ["run", c.task(), "--resume"])[1])
case("run/--resume from a garbage last.ckpt", r"checkpoint '.*last.ckpt' is damaged")(
    lambda c: (c.fake_run("t", "interrupted", ckpt=b"garbage" * 100), ["run", c.task(), "--resume"])[1])
case("run/--resume without last.ckpt", "no checkpoints/last.ckpt")(
    lambda c: (c.fake_run("t", "interrupted"), ["run", c.task(), "--resume"])[1])


@case("run/on a full disk", "cannot write '.*': No space left on device; the disk is full", allowed=("runs", "runs/t", "runs/t/*"))
def _(c):
    c.monkeypatch.setattr(os, "replace", _enospc)
    return ["run", c.task()]


@case("run/output folder not writable", "Permission denied.*no permission to write there", allowed=("runs", "runs/t", "runs/t/*"))
def _(c):
    import tempfile

    def deny(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    c.monkeypatch.setattr(tempfile, "mkstemp", deny)
    return ["run", c.task()]


def _failed_without_truncated_checkpoint(c: Ctx) -> None:
    st = json.loads((c.tmp / "runs" / "t" / "run.json").read_text())
    assert st["status"] == "failed", st
    assert not list((c.tmp / "runs" / "t" / "checkpoints").glob("*.ckpt")), "a checkpoint was left half-written"


@case("run/full disk when a checkpoint is written", "cannot write '.*(best|last).ckpt': No space left on device",
      allowed=("runs", "runs/t", "runs/t/*", "runs/t/*/*"), post=_failed_without_truncated_checkpoint)
def _(c):
    real = torch.save

    def save(obj, f, *a, **k):
        import io as _io

        if isinstance(f, _io.BytesIO):  # Lightning's own writer serialises into memory first
            return real(obj, f, *a, **k)
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    c.monkeypatch.setattr(torch, "save", save)
    return ["run", c.task()]


@case("run/--resume from a checkpoint with garbage inside", r"checkpoint '.*last.ckpt' is damaged",
      allowed=("runs/t/run.json", "runs/t/config.resolved.yaml", "runs/t/.astrotl-manifest"))
def _(c):
    import zipfile

    f = c.tmp / "garbage.ckpt"
    with zipfile.ZipFile(f, "w") as z:  # a whole zip archive (CRCs fine) whose pickle is garbage
        z.writestr("last/data.pkl", b"\x80\x02garbage that is no pickle")
        z.writestr("last/version", b"3\n")
    c.fake_run("t", "interrupted", ckpt=f.read_bytes())
    f.unlink()
    return ["run", c.task(), "--resume"]


case("run/trainer.precision banana leaves no run dir", "bad trainer settings: Precision 'banana'")(
    lambda c: ["run", c.task(trainer={"precision": "banana"})])
case("run/trainer.devices more CPU processes than cores", "trainer.devices")(
    lambda c: ["run", c.task(trainer={"devices": 2 * (os.cpu_count() or 1) + 1})])
case("run/trainer.accelerator gpu without a GPU", "no CUDA GPU", skip=_no_gpu)(
    lambda c: ["run", c.task(trainer={"accelerator": "gpu"})])

# ---- run: weights files --------------------------------------------------------------------------

for _kind, _match in (("truncated.safetensors", "not a valid safetensors file"),
                      ("garbage.safetensors", "not a valid safetensors file"),
                      ("garbage.pt", r"cannot be read \(.*\); it is truncated or not a PyTorch file"),
                      ("truncated.pt", "it is truncated or not a PyTorch file"),
                      ("evil.pt", "refused to load .*: loading it would execute code .*posix.system")):
    case(f"run/backbone weights {_kind}", _match)(
        lambda c, k=_kind: ["run", c.task(backbone={"name": "resnet18", "weights": str(c.weights(k)), "_replace": True})])
case("run/backbone weights missing", "is not a file, not run:<dir>")(
    lambda c: ["run", c.task(backbone={"name": "resnet18", "weights": str(c.tmp / "nope.pt"), "_replace": True})])

# ---- run / validate: data formats (FITS, catalogues, image folders) ---------------------------------

case("run/FITS truncated", "is truncated")(
    lambda c: ["run", c.task(data=c.cutout_data(images={
        "F555W": str(make_fits.truncate(c.mosaic()["images"]["F555W"], c.tmp / "tr.fits")),
        "F814W": c.mosaic()["images"]["F814W"]}))])
case("run/FITS garbage", "not a readable FITS file")(
    lambda c: ["run", c.task(data=c.cutout_data(images={"F555W": str(make_fits.garbage(c.tmp / "g.fits")),
                                                      "F814W": c.mosaic()["images"]["F814W"]}))])
case("run/FITS missing", "band F555W: FITS file .* does not exist")(
    lambda c: ["run", c.task(data=c.cutout_data(images={"F555W": str(c.tmp / "gone.fits"),
                                                      "F814W": c.mosaic()["images"]["F814W"]}))])
case("run/FITS without the HDU", "no HDU named 'SCIENCE'")(lambda c: ["run", c.task(data=c.cutout_data(hdu="SCIENCE"))])
case("run/band given twice (case)", "images lists band f555w twice")(
    lambda c: ["run", c.task(data=c.cutout_data(images={**c.mosaic()["images"], "f555w": c.mosaic()["images"]["F814W"]}))])
case("run/same image for two bands", "a band given twice")(
    lambda c: ["run", c.task(data=c.cutout_data(images={"F555W": c.mosaic()["images"]["F555W"],
                                                      "V": c.mosaic()["images"]["F555W"]}))])
case("run/catalogue missing", "does not exist")(lambda c: ["run", c.task(data=c.cutout_data(catalog=str(c.tmp / "no.ecsv")))])
case("run/catalogue garbage", "cannot read|not a readable|could not")(
    lambda c: ["run", c.task(data=c.cutout_data(catalog=str(c.write("bad.ecsv", "# %ECSV 1.0\n# ---\n# [garbage\n"))))])
case("run/catalogue without the x column", "x_col")(lambda c: ["run", c.task(data=c.cutout_data(x_col="xpos"))])


@case("run/catalogue with duplicate ids", "duplicated id")
def _(c):
    t = Table.read(c.mosaic()["catalog"])
    t["id"][3] = t["id"][2]
    t.write(c.tmp / "dup.ecsv")
    return ["run", c.task(data=c.cutout_data(catalog=str(c.tmp / "dup.ecsv")))]


case("run/catalogue positions off the image", "falls on the images")(
    lambda c: (Table({"id": [1, 2], "x": [1e5, 2e5], "y": [1e5, 2e5], "cls": [1, 2]}).write(c.tmp / "far.ecsv"),
               ["run", c.task(data=c.cutout_data(catalog=str(c.tmp / "far.ecsv")))])[1])
case("run/image folder missing", "image folder .* does not exist")(
    lambda c: ["run", c.task(data={"name": "image_folder", "root": str(c.tmp / "nope"), "file_col": "file",
                                   "_replace": True})])

case("run/class_subset not among the classes", r"class_subset lists \['z'\], which are not among classes \['a', 'b'\]")(
    lambda c: ["run", c.task(data=c.folder_data(classes=["a", "b"], class_subset=["z"]))])
case("run/class_subset of labels never seen", r"class_subset lists \['z'\], which are not among the classes")(
    lambda c: ["run", c.task(data=c.folder_data(class_subset=["z"]))])


@case("run/image folder with a broken PNG", "cannot read image")
def _(c):
    data = c.folder_data()
    (Path(data["root"]) / "img" / "g3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return ["run", c.task(data=data)]


case("run/image folder labels without the file column", "file_col")(
    lambda c: ["run", c.task(data=c.folder_data(file_col="path"))])
case("run/image folder band given twice", "bands lists band R twice")(
    lambda c: ["run", c.task(data=c.folder_data(bands=["R", "G", "R"]))])
case("validate/task file missing", "does not exist")(lambda c: ["validate", c.tmp / "none.yaml"])
case("validate/unknown head", "unknown|no head|did you mean")(
    lambda c: ["validate", c.task(head={"name": "linaer", "_replace": True})])
case("validate/env variable unset in data.root", "data.root: environment variable ASTROTL_TEST_UNSET is not set")(
    lambda c: ["validate", c.task(data=c.folder_data(root="${ASTROTL_TEST_UNSET}/gz1"))])

# ---- predict ------------------------------------------------------------------------------------

case("predict/not a run", "not an astrotl run directory")(lambda c: ["predict", c.tmp, "--out", c.tmp / "o.ecsv"])


@case("predict/unfinished run", "is not finished")
def _(c):
    run = c.copy_run()
    st = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**st, "status": "interrupted"}))
    return ["predict", run, "--out", c.tmp / "o.ecsv"]


case("predict/--out exists", "already exists")(
    lambda c: ["predict", c.finished, "--out", c.write("o.ecsv", "keep")])
case("predict/--out is a directory", "is a directory")(
    lambda c: ["predict", c.finished, "--out", c.tmp, "--overwrite"])
case("predict/--out bad suffix", r"must end in \.ecsv")(lambda c: ["predict", c.finished, "--out", c.tmp / "o.txt"])
case("predict/--out inside a file", "not a folder|is a file")(
    lambda c: ["predict", c.finished, "--out", c.write("afile", "x") / "o.ecsv"])
case("predict/--batch-size 0", "--batch-size 0")(
    lambda c: ["predict", c.finished, "--out", c.tmp / "o.ecsv", "--batch-size", "0"])
case("predict/--batch-size -1", "--batch-size -1")(
    lambda c: ["predict", c.finished, "--out", c.tmp / "o.ecsv", "--batch-size", "-1"])
case("predict/--device cuda without a GPU", "no CUDA GPU", skip=_no_gpu)(
    lambda c: ["predict", c.finished, "--out", c.tmp / "o.ecsv", "--device", "cuda"])
case("predict/unknown data key", "did you mean 'n_test'")(
    lambda c: ["predict", c.finished, "--out", c.tmp / "o.ecsv", "--set", "data.n_tst=3"])
case("predict/--data file missing", "does not exist")(
    lambda c: ["predict", c.finished, "--out", c.tmp / "o.ecsv", "--data", c.tmp / "nope.yaml"])
case("predict/--split banana", "invalid choice: 'banana'")(
    lambda c: ["predict", c.finished, "--out", c.tmp / "o.ecsv", "--split", "banana"])


@case("predict/truncated model.safetensors", "model.safetensors' is not a readable safetensors file")
def _(c):
    run = c.copy_run()
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    return ["predict", run, "--out", c.tmp / "o.ecsv"]


@case("predict/garbage model.safetensors", "model.safetensors' is not a readable safetensors file")
def _(c):
    run = c.copy_run()
    (run / "model.safetensors").write_bytes(b"garbage" * 50)
    return ["predict", run, "--out", c.tmp / "o.ecsv"]


# ---- ensemble -----------------------------------------------------------------------------------

case("ensemble/--out exists without --overwrite", r"--out '.*e.ecsv' already exists; .* --overwrite")(
    lambda c: ["ensemble", c.finished, c.finished, "--out", c.write("e.ecsv", "keep")])
@case("ensemble/--out is a symlink to a user's file", "already exists")
def _(c):
    target = c.write("precious.ecsv", "keep")
    (c.tmp / "e.ecsv").symlink_to(target)
    return ["ensemble", c.finished, c.finished, "--out", c.tmp / "e.ecsv"]


case("ensemble/--out is a directory", "is a directory")(lambda c: ["ensemble", c.finished, c.finished, "--out", c.tmp])
case("ensemble/--out bad suffix", r"must end in \.ecsv, \.fits or \.csv")(
    lambda c: ["ensemble", c.finished, c.finished, "--out", c.tmp / "e.txt"])
case("ensemble/--out inside a file", "is a file, not a folder")(
    lambda c: ["ensemble", c.finished, c.finished, "--out", c.write("afile", "x") / "e.ecsv"])
case("ensemble/run missing", "does not exist")(
    lambda c: ["ensemble", c.finished, c.tmp / "nope", "--out", c.tmp / "e.ecsv"])
case("ensemble/run without predictions", "has no predictions.ecsv")(
    lambda c: ["ensemble", c.finished, c.tmp, "--out", c.tmp / "e.ecsv"])
case("ensemble/--names count", "--names lists 1 names for 2 runs")(
    lambda c: ["ensemble", c.finished, c.finished, "--out", c.tmp / "e.ecsv", "--names", "a"])
case("ensemble/predictions not a table", "cannot read .* as a table")(
    lambda c: ["ensemble", c.finished, c.write("p.ecsv", "# %ECSV 1.0\n# ---\n# garbage: [\n"), "--out", c.tmp / "e.ecsv"])

# ---- cutouts ------------------------------------------------------------------------------------

case("cutouts/--pattern escapes --out", "plain file name inside --out")(
    lambda c: c.cutouts_args("--pattern", "../x_{id}.fits"))
case("cutouts/--pattern absolute", "plain file name inside --out")(
    lambda c: c.cutouts_args("--pattern", str(c.tmp / "abs_{id}.fits")))
case("cutouts/--pattern without {id}", "neither {id} nor {index}")(lambda c: c.cutouts_args("--pattern", "x.fits"))
case("cutouts/--pattern unknown field", "only {id} and {index}")(lambda c: c.cutouts_args("--pattern", "{name}.fits"))
case("cutouts/--image band twice", "band F555W is given twice")(
    lambda c: c.cutouts_args("--image", f"F555W={c.mosaic()['images']['F814W']}"))
case("cutouts/--image without =", "is not BAND=PATH")(lambda c: c.cutouts_args("--image", "F555W"))
case("cutouts/--out is a file", "is a file; give a folder")(
    lambda c: (c.write("cutfile", "x"), c.cutouts_args(out="cutfile"))[1])
case("cutouts/--limit 0", "--limit 0")(lambda c: c.cutouts_args("--limit", "0"))
case("cutouts/FITS truncated", "is truncated")(
    lambda c: c.cutouts_args("--image", f"TR={make_fits.truncate(c.mosaic()['images']['F555W'], c.tmp / 'tr.fits')}"))
case("cutouts/FITS garbage", "not a readable FITS file")(
    lambda c: c.cutouts_args("--image", f"G={make_fits.garbage(c.tmp / 'g.fits')}"))
case("cutouts/catalogue missing", "does not exist")(
    lambda c: [*c.cutouts_args()[:-4], "--catalog", c.tmp / "none.ecsv", "--out", c.tmp / "cuts"])
case("cutouts/no images", "give the images")(lambda c: ["cutouts", "--catalog", c.tmp / "x.ecsv", "--out", c.tmp / "c"])
case("cutouts/--task of another data set", "needs a catalog_cutouts data section")(
    lambda c: ["cutouts", "--task", c.task(), "--out", c.tmp / "c"])

# ---- weights ------------------------------------------------------------------------------------

case("weights/no subcommand", "needs a subcommand")(lambda c: ["weights"])
case("weights/info unknown name", "is not a file, run:<dir>")(lambda c: ["weights", "info", "nosuch-weights"])
case("weights/info truncated safetensors", "not a valid safetensors file")(
    lambda c: ["weights", "info", c.weights("truncated.safetensors")])
case("weights/import garbage .pt", "it is truncated or not a PyTorch file")(
    lambda c: ["weights", "import", c.weights("garbage.pt")])
case("weights/import truncated safetensors", "not a valid safetensors file")(
    lambda c: ["weights", "import", c.weights("truncated.safetensors")])
case("weights/import a pickle that runs code", "loading it would execute code")(
    lambda c: ["weights", "import", c.weights("evil.pt")])
case("weights/import missing file", "does not exist")(lambda c: ["weights", "import", c.tmp / "none.pt"])
for _sub in ("import", "export"):
    for _name in ("../escaped", "/tmp/astrotl-escaped", "sub/name", ".hidden"):
        case(f"weights/{_sub} --name {_name}", "--name '.*' is not a plain file name")(
            lambda c, s=_sub, n=_name: ["weights", s, c.finished / "backbone.safetensors" if s == "import" else c.finished,
                                        "--name", n])
case("weights/export a run that does not exist", "does not exist")(lambda c: ["weights", "export", c.tmp / "nope"])
case("weights/export exists without --force", "already exists; pass --force")(
    lambda c: (c.write("wdir/taken.safetensors", "x"), ["weights", "export", c.finished, "--name", "taken"])[1])


@case("weights/import into a weights dir that is a file", "cannot write .*not a folder")
def _(c):
    c.write("wfile", "x")
    c.monkeypatch.setenv("ASTROTL_WEIGHTS_DIR", str(c.tmp / "wfile"))
    return ["weights", "import", c.finished / "backbone.safetensors"]


# ---- a full disk, whatever the command (group 5) --------------------------------------------------


def _full_disk(c: Ctx) -> None:
    c.monkeypatch.setattr(os, "replace", _enospc)


_FULL = "cannot write '.*': No space left on device; the disk is full"
case("predict/on a full disk", _FULL)(
    lambda c: (_full_disk(c), ["predict", c.finished, "--out", c.tmp / "o.ecsv", "--split", "test"])[1])
case("ensemble/on a full disk", _FULL)(
    lambda c: (_full_disk(c), ["ensemble", c.finished, c.finished, "--out", c.tmp / "e.ecsv"])[1])
case("cutouts/on a full disk", _FULL, allowed=("cuts",))(lambda c: (_full_disk(c), c.cutouts_args("--limit", "2"))[1])
case("weights/import on a full disk", _FULL)(
    lambda c: (_full_disk(c), ["weights", "import", c.finished / "backbone.safetensors", "--name", "w"])[1])
case("run/run directory is a file", r"output path '.*t' exists and is a file")(
    lambda c: (c.write("runs/t", "a file"), ["run", c.task()])[1])


# ---- list / schema / plugins / the command line itself -------------------------------------------

case("list/unknown kind", "unknown component kind 'banana'")(lambda c: ["list", "banana"])
case("schema/unknown name", "no task, dataset, backbone or head is named 'nosuch'")(lambda c: ["schema", "nosuch"])
case("cli/--disable-plugin unknown", "--disable-plugin 'nosuch': no plugin of that name")(
    lambda c: ["--disable-plugin", "nosuch", "list"])
case("cli/unknown command", "invalid choice: 'nosuchcmd'")(lambda c: ["nosuchcmd"])
case("cli/unknown option", "unrecognized arguments: --nosuch")(lambda c: ["list", "--nosuch"])

# ---- plugin commands ----------------------------------------------------------------------------

case("phangs-compare/catalogue missing", "does not exist")(
    lambda c: ["phangs-compare", c.tmp / "a.ecsv", c.tmp / "b.ecsv", "--out", c.tmp / "cmp"])
case("phangs-compare/--out inside a file", "not a folder")(
    lambda c: ["phangs-compare", c.finished / "predictions.ecsv", c.finished / "predictions.ecsv", "--out",
               c.write("afile", "x"), "--a-col", "true_class", "--b-col", "pred_class", "--no-plots"])
case("phangs-compare/--n-bins 0", "--n-bins must be >= 1")(
    lambda c: ["phangs-compare", c.finished / "predictions.ecsv", c.finished / "predictions.ecsv", "--out",
               c.tmp / "cmp", "--n-bins", "0"])
case("phangs-mosaic/--n-sources -5", "n_sources=-5 is invalid")(
    lambda c: ["phangs-mosaic", c.tmp / "pm", "--n-sources", "-5"])
case("phangs-mosaic/--shape 0 0", "too small")(lambda c: ["phangs-mosaic", c.tmp / "pm", "--shape", "0", "0"])
case("phangs-mosaic/out_dir is a file", "cannot write the mosaic")(
    lambda c: ["phangs-mosaic", c.write("pmfile", "x"), "--n-sources", "5", "--shape", "100", "100"])


# -- the test -------------------------------------------------------------------------------------


def _snapshot(*roots: Path) -> dict[str, tuple]:
    snap: dict[str, tuple] = {}
    for root in roots:
        for p in [root, *root.rglob("*")]:
            key = str(p)
            if p.is_symlink():
                snap[key] = ("link", os.readlink(p))
            elif p.is_dir():
                snap[key] = ("dir",)
            elif p.exists():
                st = p.stat()
                snap[key] = ("file", st.st_size, st.st_mtime_ns)
    return snap


def _params():
    out = []
    for cs in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=cs.xfail)] if cs.xfail else []
        out.append(pytest.param(cs, id=cs.id, marks=marks))
    return out


def test_the_table_is_big_enough():
    assert len(CASES) >= 60 and len({cs.id for cs in CASES}) == len(CASES)
    commands = {cs.id.split("/")[0] for cs in CASES}
    assert {"run", "validate", "predict", "list", "schema", "ensemble", "cutouts", "weights", "phangs-compare",
            "phangs-mosaic", "cli"} <= commands


@pytest.mark.parametrize("cs", _params())
def test_bad_input(cs: Case, finished, env, tmp_path, monkeypatch, capfd):
    from astrotl.cli import main

    if cs.skip is not None and (why := cs.skip()):
        pytest.skip(why)
    monkeypatch.chdir(tmp_path)
    ctx = Ctx(tmp=tmp_path, finished=finished, monkeypatch=monkeypatch)
    argv = [str(a) for a in cs.build(ctx)]
    capfd.readouterr()
    before = _snapshot(tmp_path, finished.parent)
    try:
        code = main(["-q", *argv])
    except SystemExit as exc:  # argparse errors leave through SystemExit(2)
        code = exc.code
    monkeypatch.undo()  # os.replace & co. back before the checks
    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert "Traceback" not in err, err
    assert code == 2, f"exit code {code}; stderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("astrotl: error: "), f"stderr is not one error line: {err!r}"
    assert re.search(cs.match, lines[0]), f"{cs.match!r} not in {lines[0]!r}"
    assert "astrotl-bad-input-test-ran-code" not in out
    after = _snapshot(tmp_path, finished.parent)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    rel = [os.path.relpath(k, tmp_path) for k in changed]
    unexpected = [r for r in rel if not any(fnmatch.fnmatch(r, pat) for pat in cs.allowed)]
    assert unexpected == [], f"the command changed files it should not have: {unexpected}"
    if cs.post is not None:
        cs.post(ctx)
    temps = [r for r in rel if re.search(r"(^|/)\.[^/]+\.[a-z0-9_]{8}\.tmp", r) and os.path.lexists(tmp_path / r)]
    assert temps == [], f"temporary files left behind: {temps}"
    assert not Path("/astrotl-test-runs").exists() and not Path("/tmp/astrotl-escaped").exists()
