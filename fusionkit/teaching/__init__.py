"""Teaching aids for the notebooks: checkers that compare a student's implementation with the kit, and the
"what to notice" sentences generated from a run's recorded numbers.

A layer beside ``viz/`` and ``reproduce/`` (neither imports the other); the production code stays in the layers
below, and every checker compares against that code, so a checker is also a test of the kit's method.
"""
