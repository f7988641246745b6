"""spark-submit entry for evaluation; same arguments as ``prodclf evaluate``."""

import sys

from prodclf.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
