"""Slicer-free support code of the GraTaSegmenter Slicer module.

Everything the module needs that does not touch Slicer, Qt or VTK lives here,
so that it is tested for real with pytest, outside Slicer:

* :mod:`.parameters` -- the typed, validated adaptation parameters and the
  command line they become;
* :mod:`.events` -- the incremental parser of the command line's ``--events``
  stream and the progress it describes (steps, time left, plot points);
* :mod:`.process` -- the child process: run state machine, non-blocking
  reading, and cancelling the whole process tree;
* :mod:`.workspace` -- the temporary folder of one run, and the adapted state
  kept between runs in continual mode;
* :mod:`.catalog` -- the model catalog, its schema, downloads with checksums,
  and the download cache;
* :mod:`.terminology` -- segment names, colours and coded terminology;
* :mod:`.samples` -- the sample data manifest registered with SampleData;
* :mod:`.schema` -- a small JSON-schema validator for the parts we use.

Nothing here imports torch or any third-party package at import time.
"""
