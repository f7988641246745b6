"""Run a prodclf job file with ``--run-date`` defaulting to today's UTC date.

    with_run_date.py JOB.py [job arguments]      (e.g. /opt/prodclf/jobs/tag_catalog.py)

Why: a ScheduledSparkApplication's arguments are fixed text, and ``prodclf tag`` needs the
run's date; Airflow templates it, the Spark operator cannot. The job file itself runs
unchanged, as ``__main__``, with the same arguments plus the date (unless one is given).
"""

from __future__ import annotations

import runpy
import sys
from datetime import datetime, timezone


def job_argv(argv: list[str], today: str) -> list[str]:
    """``[job, args...]`` with ``--run-date today`` appended when no run date is given."""
    if not argv:
        raise SystemExit("usage: with_run_date.py JOB.py [job arguments]")
    given = any(a == "--run-date" or a.startswith("--run-date=") for a in argv[1:])
    return argv if given else [*argv, "--run-date", today]


def main() -> None:
    today = datetime.now(timezone.utc).date().isoformat()
    sys.argv = job_argv(sys.argv[1:], today)
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
