"""spark-submit entry for ``prodclf vacuum`` (remove old history runs and manifests).

Same arguments as the command.

spark-submit [spark options] jobs/vacuum_library.py --commodity-library ...
"""

import sys

from prodclf.cli import main

if __name__ == "__main__":
    sys.exit(main(["vacuum", *sys.argv[1:]]))
