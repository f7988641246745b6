"""spark-submit entry for ``prodclf migrate`` (upgrade a first-layout library).

Same arguments as the command.

spark-submit [spark options] jobs/migrate_library.py --commodity-library ...
"""

import sys

from prodclf.cli import main

if __name__ == "__main__":
    sys.exit(main(["migrate", *sys.argv[1:]]))
