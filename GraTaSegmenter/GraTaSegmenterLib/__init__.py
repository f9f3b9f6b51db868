"""GraTaSegmenterLib: the Slicer-free engine of GraTaSegmenter.

Test-time adaptation of segmentation networks by gradient alignment (GraTa,
Chen et al., AAAI 2025), the baselines it is compared with, the networks and
model files it runs on, and the command line that drives it. Nothing here
imports Slicer, Qt or VTK, so the same code runs in a child process of the
Slicer module, on a cluster node and in the test suite.

Submodules are imported lazily by their users; importing the package itself
is cheap (no torch import).
"""

__version__ = "0.1.0"
