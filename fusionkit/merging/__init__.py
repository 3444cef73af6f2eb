"""The merging layer: state-dict algebra and safetensors streaming, the merge registry with one file per family
of methods, the statistics some methods need, zoo-level merging and scoring, task-vector analysis, landscapes
(paths and planes in weight space) and export.

Importing any part of this layer registers every merge method (the ``methods`` package) first.
"""
from . import methods  # noqa: F401
