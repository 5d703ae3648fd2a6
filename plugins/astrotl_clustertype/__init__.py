"""astrotl-clustertype: open versus globular star clusters on DSS2-like images (Stipp & Montana-Lopez 2019).

Registers

* ``clustertype_sim`` -- simulated DSS2-like photographic images of open and globular clusters
  (:mod:`astrotl_clustertype.simulate`), generated offline and cached;
* ``clustertype_stellarium`` -- real cluster images: the nebula textures of Debian's
  ``stellarium-data`` typed with OpenNGC (:mod:`astrotl_clustertype.stellarium`; fetch them once with
  ``python -m astrotl_clustertype.stellarium fetch --cache DIR``).

The classification task is the core's (tasks/clustertype.yaml, tasks/clustertype_paper.yaml,
tasks/clustertype_stellarium.yaml: fine-tuning with the core's k-fold cross-validation, ``cv:``). Command
(:mod:`astrotl_clustertype.cli`):

* ``astrotl clustertype-evaluate RUN --out DIR`` -- score a run on the real Stellarium images as they are.
"""

from astrotl import hookimpl


@hookimpl
def astrotl_register_datasets():
    from .dataset import ClustertypeSimDataset, ClustertypeStellariumDataset

    return [ClustertypeSimDataset, ClustertypeStellariumDataset]


@hookimpl
def astrotl_register_commands():
    from .cli import COMMANDS

    return list(COMMANDS)
