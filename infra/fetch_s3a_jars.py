"""Fetch the two jars Spark's s3a connector needs into a git-ignored cache, verified.

    python infra/fetch_s3a_jars.py [--dest .cache/jars] [--check]

Why this way: ``hadoop-aws`` and the AWS SDK bundle are not in the pyspark wheel and Maven
Central is unreachable from the project's machines, but PyPI is, and the source distribution
of ``sagemaker-pyspark==1.4.5`` carries both jars. pip downloads that archive (hash-pinned,
so pip refuses any other file before building its metadata); only the two jars are read out
of it, each checked against its pinned sha256, and nothing else of the package is kept or
put on any path. With verified jars already in the cache it does nothing (no download).

``--check`` only verifies the cache (exit 1 when a jar is missing or wrong).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / ".cache" / "jars"

SDIST = "sagemaker-pyspark==1.4.5"
SDIST_SHA256 = "05ca2d5081d7138ce29a8fb0a9cba077f28c825288ed07aed46a82e63c0bf1fb"
MEMBER_DIR = "sagemaker_pyspark-1.4.5/deps/jars/"
#: jar name -> sha256; hadoop-aws 3.3.1 works against pyspark 3.5.3's Hadoop 3.3.4 client.
JARS = {
    "hadoop-aws-3.3.1.jar": "6be50ad8a8b445d2802381b085b2a3ede5c29d353450a6a21f16b2fefa962b6e",
    "aws-java-sdk-bundle-1.11.901.jar": (
        "b87175b32a16544cc1b37cf40390eb375833e62bed67f8ce6cde4b7ad6429ead"
    ),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified(dest: Path) -> bool:
    """True when every pinned jar is in ``dest`` with its pinned hash."""
    return all((dest / n).is_file() and sha256(dest / n) == h for n, h in JARS.items())


def download_sdist(workdir: Path) -> Path:
    """``pip download`` the sdist with a pinned hash (pip checks it before building)."""
    req = workdir / "requirements.txt"
    req.write_text(f"{SDIST} --hash=sha256:{SDIST_SHA256}\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--require-hashes",
            "-r",
            str(req),
            "-d",
            str(workdir / "dl"),
        ],
        check=False,
    )
    if result.returncode:
        raise SystemExit(f"fetch_s3a_jars: pip download of {SDIST} failed (see above)")
    (sdist,) = (workdir / "dl").glob("sagemaker_pyspark-*.tar.gz")
    return sdist


def extract_jars(sdist: Path, dest: Path) -> None:
    """Copy only the pinned jars out of the archive; a jar with the wrong hash is refused."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, "r:gz") as tar:
        for name, expected in JARS.items():
            member = tar.getmember(MEMBER_DIR + name)
            if not member.isfile():
                raise SystemExit(f"fetch_s3a_jars: {member.name} is not a regular file")
            src = tar.extractfile(member)
            assert src is not None
            partial = dest / f".{name}.partial"
            digest = hashlib.sha256()
            with src, partial.open("wb") as out:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != expected:
                partial.unlink()
                raise SystemExit(
                    f"fetch_s3a_jars: {name} has sha256 {digest.hexdigest()}, expected {expected}"
                )
            os.replace(partial, dest / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    parser.add_argument("--check", action="store_true", help="only verify the cache")
    args = parser.parse_args(argv)
    dest: Path = args.dest
    if verified(dest):
        print(f"s3a jars: verified in {dest}")
        return 0
    if args.check:
        print(f"s3a jars: missing or not matching their pinned sha256 in {dest}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="s3a-jars-") as tmp:
        extract_jars(download_sdist(Path(tmp)), dest)
    if not verified(dest):  # belt and braces: what is on disk now is what was pinned
        print(f"s3a jars: verification failed in {dest}", file=sys.stderr)
        return 1
    print(f"s3a jars: fetched and verified into {dest}: {', '.join(JARS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
