"""`python -m mindformer_gf ...` is the `gf` command."""

import sys

from mindformer_gf.cli import main

sys.exit(main())
