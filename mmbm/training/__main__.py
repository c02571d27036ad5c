"""``python -m mmbm.training``: train MMBM on an image corpus and a speech corpus.

    python -m mmbm.training --preset tiny --images data/shapes --speech data/speech \\
        --out models/mmbm-tiny --max-steps 3000 --max-minutes 40 [--resume]
    torchrun --nproc-per-node 2 -m mmbm.training ...   # the same run over 2 processes (DDP)

Every flag is a field of mmbm.training.train_config.TrainConfig (``--batch-size`` is
``batch_size``); ``--help`` lists them. Bad flags or data are refused with a
message before any work. The loop lives in mmbm.training.trainer.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from mmbm.errors import MMBMError
from mmbm.training.train_config import add_train_arguments, config_from_args
from mmbm.training.trainer import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmbm.training", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")
    try:
        result = train(config_from_args(args))
    except MMBMError as e:
        logging.getLogger("mmbm.training").error("%s", e)
        return 2
    if rank == 0:
        print(f"trained {result.steps} steps in {result.seconds / 60:.1f} min ({result.stop_reason}); "
              f"best validation score {result.best_metric} at step {result.best_step}; model in {result.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
