"""`astrotl predict --devices N`: the samples sharded over N processes, merged in input order; a failing shard
or chunk names the samples it held and leaves no catalogue.

This module is also a tiny plugin (``astrotl_register_datasets``) with a data set that fails on chosen
samples; the shard processes import it by module name, as they would any plugin registered in-process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from astropy.table import Table
from pydantic import Field

from astrotl.errors import DataError
from astrotl import hookimpl
from astrotl.interfaces import ComponentConfig, DatasetInfo, ImageDataset

BANDS = ("F275W", "F336W", "F438W", "F555W", "F814W")


class FailingRowsConfig(ComponentConfig):
    n: int = 40
    size: int = 16
    fail_from: int | None = Field(None, description="samples from this index on raise DataError")


class FailingRowsDataset(ImageDataset):
    """Seeded noise stamps in the PHANGS bands; samples from ``fail_from`` on cannot be read."""

    name = "failing_rows"
    Config = FailingRowsConfig

    def __len__(self) -> int:
        return self.config.n

    def __getitem__(self, index: int):
        if self.config.fail_from is not None and index >= self.config.fail_from:
            raise DataError(f"sample {index} cannot be read (test data)")
        rng = np.random.default_rng(index)
        return {"image": torch.from_numpy(rng.normal(size=(5, self.config.size, self.config.size)).astype(np.float32)),
                "index": index}

    def info(self) -> DatasetInfo:
        return DatasetInfo(bands=BANDS, classes=("1", "2", "3", "4"), image_size=self.config.size)


@hookimpl
def astrotl_register_datasets():
    return [FailingRowsDataset]


@pytest.fixture(scope="module")
def run(tmp_path_factory, _cache_dir):
    from astrotl.cli import main
    from testutils import TINY

    d = tmp_path_factory.mktemp("ddp")
    p = d / "base.yaml"
    p.write_text(yaml.safe_dump(dict(TINY, name="base", output_dir=str(d / "runs"))))
    assert main(["-q", "run", str(p)]) == 0
    return d / "runs" / "base"


@pytest.fixture(scope="module")
def regs():
    from astrotl.plugins import load_registries

    return load_registries(extra_plugins=[("failing_rows_test", sys.modules[__name__])])


def _data(tmp_path: Path, **cfg) -> Path:
    p = tmp_path / "data.yaml"
    p.write_text(yaml.safe_dump({"data": {"name": "failing_rows", **cfg}}))
    return p


@pytest.mark.slow
def test_two_processes_give_the_one_process_catalogue(run, regs, tmp_path):
    from astrotl.predict import predict

    one = predict(run, regs, out=tmp_path / "one.ecsv", data_file=_data(tmp_path, n=41), device="cpu", devices=1)
    two = predict(run, regs, out=tmp_path / "two.ecsv", data_file=_data(tmp_path, n=41), device="cpu", devices=2)
    a, b = Table.read(one), Table.read(two)
    assert len(a) == len(b) == 41 and list(b["id"]) == list(range(41))  # input order, every sample once
    assert list(a["pred_class"]) == list(b["pred_class"])
    np.testing.assert_allclose(a["p_3"], b["p_3"], atol=1e-6)
    assert "chunk" not in b.meta and b.meta["merged_chunks"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.yaml", "one.ecsv", "two.ecsv"]  # no parts left


@pytest.mark.slow
def test_a_failing_shard_names_its_samples_and_writes_nothing(run, regs, tmp_path):
    from astrotl.predict import predict

    out = tmp_path / "out.ecsv"
    with pytest.raises(DataError, match=r"^shard 2/2 \(samples 20-39 of 40\) failed: sample 30 cannot be read "
                                        r"\(test data\); no catalogue written$"):
        predict(run, regs, out=out, data_file=_data(tmp_path, fail_from=30), device="cpu", devices=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.yaml"]  # no catalogue, no parts


def test_a_failing_chunk_names_its_samples(run, regs, tmp_path):
    from astrotl.predict import predict

    data = _data(tmp_path, fail_from=30)
    ok = predict(run, regs, out=tmp_path / "c1.ecsv", data_file=data, device="cpu", chunk="1/2")
    assert len(Table.read(ok)) == 20
    with pytest.raises(DataError, match=r"^chunk 2/2 \(samples 20-39 of 40\) failed: sample 30 cannot be read "
                                        r"\(test data\); no catalogue written for it$"):
        predict(run, regs, out=tmp_path / "c2.ecsv", data_file=data, device="cpu", chunk="2/2")
    assert not (tmp_path / "c2.ecsv").exists()


@pytest.mark.parametrize("args,match", [
    (["--devices", "0"], r"--devices 0: give a positive number of processes"),
    (["--devices", "999"], r"--devices 999 CPU processes, but this machine has \d+ cores"),
    (["--devices", "2", "--chunk", "1/2"], r"--chunk and --devices > 1 cannot be combined"),
])
def test_bad_devices_are_one_line_errors(cli, run, tmp_path, args, match):
    import re

    code, _, err = cli("predict", run, "--device", "cpu", "--out", tmp_path / "o.ecsv", *args)
    assert code == 2 and err.count("\n") == 1 and re.search(match, err), err
    assert not (tmp_path / "o.ecsv").exists()
