"""Exception and warning classes.

Every error a user can cause (bad config, missing file, unknown name, refused weights,
an occupied run directory) derives from :class:`AstrotlError`. The command line turns
these into one line on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AstrotlError(Exception):
    """Base class of the errors a user can fix. Its message is one line: problem and fix."""


class ConfigError(AstrotlError):
    """A task file or override is invalid (syntax, unknown key, bad value)."""


class UnknownNameError(ConfigError):
    """A component name (task, dataset, backbone, head) is not registered."""


class DataError(AstrotlError):
    """Input data is missing, corrupt or inconsistent."""


class WeightsError(AstrotlError):
    """Pretrained weights cannot be found, verified or safely loaded."""


class RunDirError(AstrotlError):
    """The output directory cannot be used (finished run, nothing to resume, ...)."""


class PluginError(AstrotlError):
    """A plugin is broken: bad hook, duplicate component name, import failure."""


class OutputError(AstrotlError):
    """An output cannot be written: the path is a directory or a file where a folder is needed,
    no permission, a full disk, a name that would escape its folder, an existing file without
    ``--overwrite``. Nothing half-written is left behind."""


class AstrotlWarning(UserWarning):
    """Base warning class of astrotl."""


class DataWarning(AstrotlWarning):
    """Input data was accepted but something in it was left out (e.g. rows whose label is not a class)."""


class RandomInitWarning(AstrotlWarning):
    """Pretrained weights were requested with ``auto`` but could not be had; the backbone is random."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` if none is close."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""
