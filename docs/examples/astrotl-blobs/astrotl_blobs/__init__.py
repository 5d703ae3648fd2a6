"""astrotl-blobs: classify simulated round and elongated blobs (an example plugin)."""

from astrotl import hookimpl


@hookimpl
def astrotl_register_datasets():
    from .dataset import BlobDataset

    return [BlobDataset]


@hookimpl
def astrotl_register_tasks():
    from .task import BlobShapeTask

    return [BlobShapeTask]
