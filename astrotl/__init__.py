"""astrotl: transfer learning on astronomical images.

The public API for plugin authors::

    from astrotl import hookimpl, ImageDataset, Backbone, Head, Task, ComponentConfig, DatasetInfo
"""

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402
from .interfaces import Backbone, ComponentConfig, DatasetInfo, Head, ImageDataset, Task  # noqa: E402

__all__ = ["__version__", "hookimpl", "Backbone", "ComponentConfig", "DatasetInfo", "Head", "ImageDataset", "Task"]
