"""spark-submit entry for training; same arguments as ``prodclf train``."""

import sys

from prodclf.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
