"""spark-submit entry for ``prodclf report`` (rebuild a run's HTML report); same arguments.

spark-submit [spark options] jobs/build_report.py --commodity-library ...
"""

import sys

from prodclf.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
