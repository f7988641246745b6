"""spark-submit entry for the nightly tagging job; same arguments as ``prodclf tag``.

spark-submit [spark options] jobs/tag_catalog.py --base-library ... --run-date ...
"""

import sys

from prodclf.cli import main

if __name__ == "__main__":
    sys.exit(main(["tag", *sys.argv[1:]]))
