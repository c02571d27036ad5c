"""``python -m mmbm.evaluate MODEL_DIR ...``: measure a checkpoint (see mmbm.evaluate.evaluator)."""

import sys

from mmbm.evaluate.evaluator import main

sys.exit(main())
