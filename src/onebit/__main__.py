"""``python -m onebit ...`` (and ``torchrun --nproc_per_node=N -m onebit train RECIPE``)."""

import sys

from .cli import main

sys.exit(main())
