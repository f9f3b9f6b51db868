"""The names a user can choose from, in one place.

The command line, the pipeline behind it and the Slicer panel (which must not
import torch at start-up) all offer the same methods, losses, modes, devices
and precisions; defining them once keeps the three from drifting apart. Plain
Python only: importing this module costs nothing.
"""

METHODS = ("grata", "tent", "bn", "none")
GRADIENT_METHODS = ("grata", "tent")  # the methods that take adaptation steps
LOSSES = ("ent", "consis", "recon", "denoise", "supres", "rotate")
MODES = ("episodic", "continual")
DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("fp32", "bf16")
