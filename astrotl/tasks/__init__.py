"""astrotl's generic tasks (no survey knowledge): one module per task type."""

from __future__ import annotations


def builtin_tasks() -> list[type]:
    """The task classes astrotl's built-in plugin registers."""
    from .classification import ClassificationTask

    tasks: list[type] = [ClassificationTask]
    from .soft_labels import SoftLabelsTask
    tasks.append(SoftLabelsTask)
    from .detection import DetectionTask; tasks.append(DetectionTask)  # noqa: E702
    return tasks
