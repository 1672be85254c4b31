"""``python -m onebit ...`` (and ``torchrun --nproc_per_node=N -m onebit train RECIPE``)."""

import os
import sys

from .cli import main

if "TORCHELASTIC_RUN_ID" in os.environ:  # under torchrun: a failing rank's error in torchrun's summary
    from torch.distributed.elastic.multiprocessing.errors import record

    main = record(main)

sys.exit(main())
