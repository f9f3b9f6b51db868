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

# What an adaptation does when the user chooses nothing. The command line, the
# pipeline behind it and the Slicer panel (and its saved settings) start from
# these. The learning rate is the paper's; 10 steps for one image is the
# episodic benchmark's choice (docs/benchmark.md: chosen for time, the Dice
# does not move measurably between 1 and 30 steps on the phantom).
DEFAULT_METHOD = "grata"
DEFAULT_STEPS = 10
DEFAULT_LR = 1e-4
DEFAULT_AUX_LOSS = "ent"
DEFAULT_PSEUDO_LOSS = "consis"
DEFAULT_MODE = "episodic"
DEFAULT_DEVICE = "auto"
DEFAULT_SEED = 0
DEFAULT_PRECISION = "fp32"
