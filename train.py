"""Train pneumonia-hf: `python train.py --data ../shared/data/chest_xray --folds 5 --epochs 15`.

Runs the same under `accelerate launch [--multi_gpu --num_processes N] train.py ...`; see --help.
"""

import sys

from pneumonia_hf.config import parse_config
from pneumonia_hf.training import run

if __name__ == "__main__":
    try:
        run(parse_config())
    except (ValueError, OSError) as e:  # bad data source or flags, --resume mismatch, Hub/network errors: one line
        sys.exit(f"train.py: error: {e}")
