"""The kit's errors: one base class, one subclass per area.

Every error a user can cause (bad input, a missing asset, an impossible option) is a :class:`FusionkitError`
whose message names the problem and the fix. The command line prints these as one line; any other exception
is a bug and keeps its traceback. ``FusionkitError`` is a ``ValueError``, so code that caught ``ValueError``
before still catches it.
"""
from __future__ import annotations

import sys
import warnings


class FusionkitError(ValueError):
    """Bad input or an impossible request; the message says what to change."""


class CacheError(FusionkitError):
    """The cache folder cannot be used, or an artefact in it is damaged."""


class OutputExistsError(FusionkitError, FileExistsError):
    """A destination the user named already exists (nothing a user made is overwritten unless asked)."""


class DeviceError(FusionkitError):
    """A device or precision that this machine cannot provide."""


class AssetError(FusionkitError):
    """A base model or corpus cannot be fetched, verified or found."""


class TaskError(FusionkitError):
    """A task cannot be built from the given data."""


class MergeError(FusionkitError):
    """A merge cannot run with the given inputs or options."""


class NonFiniteInput(MergeError):
    """An input of a merge has NaN or Inf values; raised by a method that met them on its way (TIES's cut reads every
    task-vector entry), so the driver can name which input without reading every input beforehand."""


class SearchError(FusionkitError):
    """A search (DFWE, Evolver) cannot run with the given inputs or options."""


class DistillError(FusionkitError):
    """Entities, probes or a distillation run cannot be used as given."""


class EntityFormatError(DistillError):
    """A line of an entities file does not follow the Entity Inferences format (the message names file:line)."""


class CacheWarning(UserWarning):
    """A damaged cache artefact was found and moved aside; the kit builds it again."""


def one_line_warnings() -> None:
    """Print the kit's own warnings as ``fusionkit: warning: ...`` (the command line's style); others as usual."""
    show = warnings.showwarning
    if getattr(show, "fusionkit", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CacheWarning):
            print(f"fusionkit: warning: {message}", file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)
    showwarning.fusionkit = True
    warnings.showwarning = showwarning
