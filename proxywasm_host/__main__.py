import sys

from proxywasm_host.cli import main

sys.exit(main())
