"""astrotl-phangs: the PHANGS-HST star-cluster science case (Wei et al. 2020; Whitmore et al. 2021).

Registers

* ``phangs_sim`` -- simulated five-band WFC3/UVIS cutouts of cluster candidates (classes 1-4 with
  the class-4 sub-classes), generated offline and cached;
* ``phangs_mosaic`` -- cutouts from a painted five-band mosaic with WCS and its candidate
  catalogue (:mod:`astrotl_phangs.mosaic`), read through ``catalog_cutouts`` like real data;
* ``phangs_clusters`` -- the four-class morphological classifier with the paper's augmentation
  (90-degree rotations and flips) and its evaluation (per-class agreement, Class 1+2 combined,
  accuracy versus magnitude, sub-class breakdown).
"""

from astrotl import hookimpl


@hookimpl
def astrotl_register_datasets():
    from .dataset import PhangsSimDataset
    from .mosaic_dataset import PhangsMosaicDataset

    return [PhangsSimDataset, PhangsMosaicDataset]


@hookimpl
def astrotl_register_tasks():
    from .task import PhangsClusterTask

    return [PhangsClusterTask]


@hookimpl
def astrotl_register_commands():
    from . import cli_compare, cli_mosaic

    return [cli_compare, cli_mosaic]
