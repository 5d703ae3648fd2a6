"""Built-in, survey-agnostic data sets.

:class:`CatalogCutoutDataset` (``catalog_cutouts``)
    Multi-band stamps cut from memory-mapped FITS mosaics at catalogue positions.
:class:`ImageFolderDataset` (``image_folder``)
    PNG / JPEG / FITS files listed in a labels table (e.g. Galaxy Zoo JPEGs, exported MEF cutouts).
"""

from __future__ import annotations

from .cutouts import CatalogCutoutConfig, CatalogCutoutDataset
from .detection_folder import ImageBoxesDataset
from .image_folder import ImageFolderConfig, ImageFolderDataset

BUILTIN_DATASETS = (CatalogCutoutDataset, ImageFolderDataset, ImageBoxesDataset)

__all__ = ["BUILTIN_DATASETS", "CatalogCutoutConfig", "CatalogCutoutDataset", "ImageFolderConfig",
           "ImageFolderDataset"]
