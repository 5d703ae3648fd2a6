"""Tests of the clump post-processing steps and DS9 region output (astrotl_clumps.postprocess)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from astrotl.errors import DataError
from astrotl_clumps.postprocess import (
    DEFAULT_MERGE_PX,
    PostprocessConfig,
    mask_outside_host,
    merge_close,
    nms,
    postprocess,
    read_ds9_regions,
    score_cut,
    write_ds9_regions,
)
from astrotl_clumps.simulate import make_wcs


def _det(boxes, scores, labels=None, torch_=True):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.zeros(len(scores), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if torch_:
        return {"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores), "labels": torch.from_numpy(labels)}
    return {"boxes": boxes, "scores": scores, "labels": labels}


def test_nms_removes_overlaps():
    det = _det([[10, 10, 20, 20], [11, 10, 21, 20], [40, 40, 50, 50], [13, 13, 23, 23]], [0.6, 0.9, 0.5, 0.7])
    out = nms(det)
    # [11..21] (0.9) suppresses [10..20] (IoU 0.82); [13..23] overlaps it with IoU 0.41 > 0.2: gone too
    assert out["scores"].tolist() == pytest.approx([0.9, 0.5])
    assert isinstance(out["boxes"], torch.Tensor) and out["labels"].dtype == torch.int64
    loose = nms(det, iou=0.5)
    assert loose["scores"].tolist() == pytest.approx([0.9, 0.7, 0.5])


def test_nms_per_class_and_agnostic():
    det = _det([[10, 10, 20, 20], [11, 10, 21, 20]], [0.9, 0.8], labels=[0, 1])
    assert len(nms(det)["scores"]) == 2
    assert nms(det, class_agnostic=True)["labels"].tolist() == [0]


def test_score_cut_and_numpy_in_numpy_out():
    det = _det([[0, 0, 4, 4], [5, 5, 9, 9], [10, 10, 14, 14]], [0.1, 0.3, 0.8], torch_=False)
    det["extra"] = np.array([1, 2, 3])
    out = score_cut(det)
    assert isinstance(out["scores"], np.ndarray)
    assert out["scores"].tolist() == pytest.approx([0.3, 0.8]) and out["extra"].tolist() == [2, 3]


def test_merge_within_distance_keeps_highest_score():
    # centres (15, 15), (17, 15) [2 px apart], (30, 15) [15 px away]
    det = _det([[10, 10, 20, 20], [12, 10, 22, 20], [25, 10, 35, 20]], [0.5, 0.9, 0.6], labels=[0, 1, 0])
    out = merge_close(det, distance_px=3.0)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.6])
    assert out["labels"].tolist() == [1, 0]  # the survivor keeps its own box and label
    np.testing.assert_allclose(out["boxes"][0].numpy(), [12, 10, 22, 20])
    assert len(merge_close(det, distance_px=1.5)["scores"]) == 3
    assert len(merge_close(det, distance_px=3.0, class_agnostic=False)["scores"]) == 3  # different classes
    assert len(merge_close(det, distance_px=20.0)["scores"]) == 1
    assert DEFAULT_MERGE_PX == pytest.approx(1.4 / 0.396)


def test_mask_with_segmentation_map_and_ellipse():
    det = _det([[8, 8, 12, 12], [28, 8, 32, 12], [60, 60, 70, 70]], [0.9, 0.8, 0.7])  # centres (10,10) (30,10) (65,65)
    m = np.zeros((40, 40), dtype=bool)
    m[5:15, 5:15] = True
    out = mask_outside_host(det, mask=m)
    assert out["scores"].tolist() == pytest.approx([0.9])  # (30, 10) is outside, (65, 65) is off the frame
    # ellipse centred at (20, 10), a = 12 along x, b = 3: both (10, 10) and (30, 10) are inside
    out = mask_outside_host(det, ellipse=(20, 10, 12, 3, 0))
    assert len(out["scores"]) == 2
    # turned by 90 degrees the long axis runs along y: both are outside
    assert len(mask_outside_host(det, ellipse=(20, 10, 12, 3, 90))["scores"]) == 0
    assert len(mask_outside_host(det, mask=torch.from_numpy(m))["scores"]) == 1


def test_postprocess_chain_and_config():
    boxes = [[10, 10, 20, 20], [11, 10, 21, 20], [30, 30, 40, 40], [33, 30, 43, 40], [2, 50, 8, 56]]
    det = _det(boxes, [0.9, 0.85, 0.5, 0.2, 0.95])
    m = np.zeros((64, 64), dtype=bool)
    m[:45, :45] = True
    out = postprocess(det, mask=m)
    # NMS drops 0.85; score cut drops 0.2; the mask drops (5, 53); nothing left within 3.5 px
    assert out["scores"].tolist() == pytest.approx([0.9, 0.5])
    off = PostprocessConfig(nms_iou=None, score_threshold=None, mask_outside_host=False, merge_distance_px=None)
    assert len(postprocess(det, off)["scores"]) == 5
    merged = postprocess(det, PostprocessConfig(nms_iou=None, score_threshold=None, mask_outside_host=False,
                                                merge_distance_px=4.0))
    assert merged["scores"].tolist() == pytest.approx([0.95, 0.9, 0.5])
    empty = postprocess(_det(np.zeros((0, 4)), []), mask=m)
    assert tuple(empty["boxes"].shape) == (0, 4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(nms_iou=0.0), "nms_iou"),
    (dict(score_threshold=1.5), "score_threshold"),
    (dict(merge_distance_px=-1), "merge_distance_px"),
    (dict(nms_threshold=0.3), "nms_threshold"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        PostprocessConfig(**kwargs)


def test_errors():
    good = _det([[0, 0, 4, 4]], [0.5])
    with pytest.raises(DataError, match="must be a dict"):
        nms([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(DataError, match="have no scores"):
        score_cut({"boxes": torch.zeros(1, 4)})
    with pytest.raises(DataError, match=r"shape \[3\]; expected \[N, 4\]"):
        nms({"boxes": torch.zeros(3), "scores": torch.zeros(3)})
    with pytest.raises(DataError, match="'scores' has 2 entries but there are 1 boxes"):
        nms({"boxes": torch.zeros(1, 4), "scores": torch.zeros(2)})
    with pytest.raises(DataError, match="nms iou=1.5 is invalid"):
        nms(good, iou=1.5)
    with pytest.raises(DataError, match="score threshold=-0.1 is invalid"):
        score_cut(good, threshold=-0.1)
    with pytest.raises(DataError, match="merge distance_px=0 is invalid"):
        merge_close(good, distance_px=0)
    with pytest.raises(DataError, match="needs the host's segmentation mask or ellipse"):
        mask_outside_host(good)
    with pytest.raises(DataError, match="needs the host's segmentation mask or ellipse"):
        postprocess(good)
    with pytest.raises(DataError, match=r"host mask has shape \[2, 4, 4\]"):
        mask_outside_host(good, mask=np.ones((2, 4, 4), dtype=bool))
    with pytest.raises(DataError, match="host ellipse .* is invalid"):
        mask_outside_host(good, ellipse=(1, 2, 3))
    with pytest.raises(DataError, match="semi-axes a=0.0, b=1.0 are invalid"):
        mask_outside_host(good, ellipse=(1, 2, 0, 1, 0))


# --------------------------------------------------------------------------------------
# DS9 regions


def test_ds9_pixel_round_trip(tmp_path):
    from regions import Regions

    det = _det([[10.25, 12.5, 20.75, 22.0], [30, 31, 35, 38]], [0.91, 0.42], labels=[0, 1])
    path = write_ds9_regions(tmp_path / "det.reg", det)
    assert not list(tmp_path.glob("*.tmp"))
    text = path.read_text()
    assert "image" in text and "clump 0.91" in text and "odd_clump 0.42" in text
    back = read_ds9_regions(path)
    np.testing.assert_allclose(back["boxes"], det["boxes"].numpy(), atol=0.01)
    assert list(back["text"]) == ["clump 0.91", "odd_clump 0.42"]
    # DS9 is 1-based: the first centre (15.5, 17.25) is written as (16.5, 18.25)
    assert "16.5" in text and "18.25" in text
    regs = Regions.read(str(path), format="ds9")
    assert abs(regs[0].center.x - 15.5) < 0.01 and abs(regs[0].center.y - 17.25) < 0.01


def test_ds9_sky_round_trip(tmp_path):
    from regions import Regions, RectangleSkyRegion

    wcs = make_wcs(150.1, 2.2, 31.5, 31.5)
    det = _det([[10.25, 12.5, 20.75, 22.0], [40, 41, 46, 49]], [0.8, 0.6])
    path = write_ds9_regions(tmp_path / "sky.reg", det, wcs=wcs)
    text = path.read_text()
    assert "fk5" in text or "icrs" in text
    regs = Regions.read(str(path), format="ds9")
    assert all(isinstance(r, RectangleSkyRegion) for r in regs)
    for r, b in zip(regs, det["boxes"].numpy()):
        pix = r.to_pixel(wcs)
        assert abs(pix.center.x - (b[0] + b[2]) / 2) < 0.01 and abs(pix.center.y - (b[1] + b[3]) / 2) < 0.01
        assert abs(pix.width - (b[2] - b[0])) < 0.01 and abs(pix.height - (b[3] - b[1])) < 0.01
        ra, dec = wcs.pixel_to_world_values((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
        assert abs(r.center.ra.deg - ra) * 3600 * np.cos(np.radians(dec)) < 0.01 * 0.396
    back = read_ds9_regions(path, wcs=wcs)
    np.testing.assert_allclose(back["boxes"], det["boxes"].numpy(), atol=0.01)
    with pytest.raises(DataError, match="holds sky regions; pass the image's wcs"):
        read_ds9_regions(path)


def test_ds9_empty_and_errors(tmp_path):
    path = write_ds9_regions(tmp_path / "none.reg", _det(np.zeros((0, 4)), []))
    assert read_ds9_regions(path)["boxes"].shape == (0, 4)
    with pytest.raises(DataError, match="have no boxes"):
        write_ds9_regions(tmp_path / "x.reg", {"scores": [0.1]})
    with pytest.raises(DataError, match=r"shape \[2, 3\]"):
        write_ds9_regions(tmp_path / "x.reg", {"boxes": np.zeros((2, 3))})
    (tmp_path / "bad.reg").write_text("this is not a region file ((((")
    with pytest.raises(DataError, match="cannot read DS9 regions"):
        read_ds9_regions(tmp_path / "bad.reg")
    with pytest.raises(DataError, match="cannot read DS9 regions"):
        read_ds9_regions(tmp_path / "missing.reg")
