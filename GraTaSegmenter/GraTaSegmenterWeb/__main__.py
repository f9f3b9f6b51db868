"""``python -m GraTaSegmenterWeb``: what ``grata-segmenter web`` runs."""

import sys

from .server import main

sys.exit(main())
