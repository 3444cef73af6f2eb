"""Reproductions: each seed paper's claim tested under its protocol, with an interval and a verdict.

One module per paper family, each returning rows of the reproduction table (:mod:`.table`): merging (RegMean,
Fisher, the multi-task model, the ensemble), the searches (DFWE, the Evolver), context distillation. Every choice
is made on dev data and reported with the row; test is looked at once. ``benchmarks/reproduce.py`` writes the
table; the notebooks show their own rows.
"""
