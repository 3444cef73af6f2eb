"""The search layer: merge weights chosen without gradients on dev data - DFWE (nevergrad over interpolation
weights) and the Evolver (differential evolution over whole models) - with the protocol they share (dev-only
selection, test looked at once, the same baselines on the same dev data) and the executors that spread
candidate evaluations over threads, processes or a dask cluster."""
