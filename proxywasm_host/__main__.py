"""``python -m proxywasm_host``: the ``proxywasm-host`` command line."""

import sys

from proxywasm_host.cli import main

sys.exit(main())
