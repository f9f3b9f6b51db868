"""The browser front-end of GraTaSegmenter, on Slicer's own core (trame-slicer).

The clinician's flow of the Slicer module, in a web page served by Python:
open an image, Adapt & Segment (the engine in a child process, watched step
by step), the result over the image in Slicer's slice view (and a 3D view for
volumes), correction with Slicer's segment editor, save.

Layers, one job each:

* :mod:`.rendering` -- the offscreen OpenGL of the server's views (before VTK loads);
* :mod:`.files` -- where files may come from and go to (the ``--data`` folder, uploads,
  names that must not escape or overwrite);
* :mod:`.session` -- the scene and the run, without any page: open, adapt (through
  ``GraTaSegmenterLib.slicer_support``, the run/cancel/event code the Slicer panel uses),
  import, correct, save. Tested without a browser;
* :mod:`.page` -- the trame page that shows a session and forwards clicks to it;
* :mod:`.server` -- ``grata-segmenter web``: options, the address, a clean stop.

Like :mod:`GraTaSegmenterMRML`, this package imports ``slicer`` and ``vtk``; the
engine (``GraTaSegmenterLib``) never imports it, and the server process never
imports torch (the engine runs in its own process).
"""
