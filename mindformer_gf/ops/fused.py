"""The old name of `mindformer_gf.ops.cpu` (the CPU backend of the fused operators), kept for one release: importing
it gives that very module, so attributes set on one are seen through the other."""

import sys

from mindformer_gf.ops import cpu

sys.modules[__name__] = cpu
