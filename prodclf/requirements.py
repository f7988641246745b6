"""What a command needs beyond the core install, stated once and checked before Spark starts.

Tagging and evaluation run on Spark 3.5 and 4.x. Training streams its data through
petastorm 0.13.1, which needs pyarrow < 13 and therefore Spark 3.5: it lives in the
``train`` extra, pinned by ``constraints.txt``. Looking up installed distributions imports
none of them, so the check is cheap and runs before any Spark work.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

from prodclf.errors import ProdclfError

#: The one line ``prodclf train`` prints when the training stack is missing.
TRAIN_INSTALL_HINT = (
    "install it with: pip install 'prodclf[tf,train]' -c constraints.txt "
    "(training needs petastorm, hence Spark 3.5 and pyarrow<13; "
    "the Spark 4 environment tags and evaluates only)"
)


class MissingExtra(ProdclfError):
    """The command needs an optional part of prodclf that this environment lacks."""


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None when it is absent."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def training_problem() -> str | None:
    """Why this environment cannot train (petastorm, Spark 3.5, pyarrow<13), or None."""
    if installed_version("petastorm") is None:
        return "petastorm is not installed"
    spark = installed_version("pyspark")
    if spark is not None and _major(spark) != 3:
        return f"pyspark {spark} is installed, petastorm needs Spark 3.5"
    arrow = installed_version("pyarrow")
    if arrow is not None and _major(arrow) >= 13:
        return f"pyarrow {arrow} is installed, petastorm needs pyarrow<13"
    return None


def require_training() -> None:
    """Refuse ``prodclf train`` (one line, exit 2) where the training stack is missing."""
    problem = training_problem()
    if problem:
        raise MissingExtra(f"prodclf train cannot run here: {problem}; {TRAIN_INSTALL_HINT}")


# --- the same prodclf on the driver and the executors ---------------------------------------


@functools.lru_cache(maxsize=1)
def code_identity(root: Path | None = None) -> str:
    """This installation's prodclf: its version and a digest of its Python sources.

    The digest catches what the version does not: an environment archive packed from
    another commit with the version unchanged. Installs of the same sources (an editable
    checkout on the driver, the wheel on the executors) have the same digest; one with no
    ``.py`` files (byte code only) is known by its version alone.
    """
    import prodclf

    base = root or Path(prodclf.__file__).resolve().parent
    digest = hashlib.sha256()
    files = sorted(p for p in base.rglob("*.py") if "__pycache__" not in p.parts)
    for path in files:
        digest.update(path.relative_to(base).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return f"{prodclf.__version__}+{digest.hexdigest()[:12]}" if files else prodclf.__version__


def skew(driver: str, worker: str) -> bool:
    """Whether two ``code_identity`` values are other code (digests count when both have one)."""
    if "+" in driver and "+" in worker:
        return driver != worker
    return driver.split("+", 1)[0] != worker.split("+", 1)[0]
