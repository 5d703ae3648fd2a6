"""astrotl-clumps: giant star-forming clump detection in SDSS-like images (Popp et al. 2024).

Registers the data sets

* ``clumps_sim`` -- simulated SDSS-like g, r, i frames of clumpy disk galaxies with ``clump`` /
  ``odd_clump`` boxes, distractors (stars, nuclei, background galaxies), host masks and a WCS per
  image (:mod:`astrotl_clumps.simulate`, :mod:`astrotl_clumps.dataset`);
* ``clumpscout`` -- the Galaxy Zoo: Clump Scout aggregated boxes on user-supplied SDSS cutouts;
* ``gzh_s82`` -- the 92 clumpy GZ:Hubble Stripe 82 galaxies of Mehta et al. (2021) with calibrated,
  approximate clump positions (:mod:`astrotl_clumps.s82`).

:mod:`astrotl_clumps.postprocess` holds the reference pipeline's post-processing (NMS, score cut,
host mask, merge within a PSF FWHM) and DS9 region output.

Registers the task ``clumps`` (:class:`astrotl_clumps.task.ClumpDetectionTask`: the core
``detection`` task with that post-processing, completeness by clump brightness, a detections
catalogue with RA/Dec, DS9 region files and overlays) and the commands ``astrotl clumps-evaluate``
(:mod:`astrotl_clumps.evaluate`: a finished run scored on other labelled data, e.g. the Stripe 82 clumps)
and ``astrotl clumps-regions-check`` (:mod:`astrotl_clumps.regions_check`: a run's DS9 files read back and
compared with its catalogue).

Backbones x training-set sizes x seeds are the core's ``astrotl compare`` on ``tasks/clumps_compare.yaml``
(no command of this plugin).
"""

from astrotl import hookimpl


@hookimpl
def astrotl_register_datasets():
    from .dataset import ClumpScoutDataset, ClumpsSimDataset
    from .s82 import S82ClumpsDataset

    return [ClumpsSimDataset, ClumpScoutDataset, S82ClumpsDataset]


@hookimpl
def astrotl_register_tasks():
    from .task import ClumpDetectionTask

    return [ClumpDetectionTask]


@hookimpl
def astrotl_register_commands():
    from . import evaluate, regions_check

    return [evaluate, regions_check]
