"""astrotl-clash: CLASH multiband morphology as vote fractions (Perez-Carrasco et al. 2019).

Registers

* ``clash_sim`` -- simulated single-band HST stamps with simulated visual-classification vote
  fractions over spheroid / disk / irregular / point source / unclassifiable: the CANDELS-like
  F160W source domain (``domain: candels``) or the CLASH-like 16-band target domain
  (``domain: clash``, one sample per galaxy and band, splits grouped by galaxy);
  see :mod:`astrotl_clash.simulate`;
* ``clash_votes`` -- the real CLASH (1,600 stamps) or CANDELS (7,567 galaxies) vote fractions of
  Perez-Carrasco et al. (2019) joined to FITS stamps a user supplies (``data.stamps_dir``);
* ``clash_morphology`` -- the ``soft_labels`` task with the paper's RMSE loss, the RMSE per band
  (wavelength order, per class), a (galaxy, band) catalogue and the paper's definitions in the report
  (:mod:`astrotl_clash.task`).

The label-efficiency experiment (RMSE against the number of labelled CLASH-like galaxies, fine-tuned versus
from scratch) needs no code of its own: it is ``astrotl compare tasks/clash_label_efficiency.yaml`` after
``astrotl run tasks/clash_pretrain.yaml`` (docs/clash.md).

Both data sets yield ``{"image": [1, H, W], "target": [5], "votes": [5] (when known), "index"}`` for the
core's ``soft_labels`` task.
"""

from astrotl import hookimpl


@hookimpl
def astrotl_register_datasets():
    from .dataset import ClashSimDataset, ClashVotesDataset

    return [ClashSimDataset, ClashVotesDataset]


@hookimpl
def astrotl_register_tasks():
    from .task import ClashMorphologyTask

    return [ClashMorphologyTask]
