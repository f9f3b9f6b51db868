"""The MRML half of the GraTa Segmenter module: everything it does to the scene.

Imports only ``slicer`` and ``vtk`` (never the engine, never Qt), so it runs
under Slicer's real MRML core in the tests. File work is done with storage
nodes that never join the user's scene: writing the input for the engine
does not re-point the volume's storage node, and results are read in a
scene of their own and copied in, so no node of the scene ends up pointing
into the run's temporary folder and no storage or display node is left over.
"""

from .scene import (PlotNodes, applyTerms, placeBeside, readSegmentation, readVolume, showSurfaces,
                    writeVolume)

__all__ = ["PlotNodes", "applyTerms", "placeBeside", "readSegmentation", "readVolume", "showSurfaces", "writeVolume"]
