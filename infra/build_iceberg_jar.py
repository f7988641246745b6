"""Build a TEST STAND-IN Iceberg Spark runtime jar from PyPI wheels, verified, into the cache.

    python infra/build_iceberg_jar.py [--dest .cache/jars] [--check]   # prints the jar's path

For the offline tests only: production uses the official Maven artifact
``org.apache.iceberg:iceberg-spark-runtime-3.5_2.12:1.10.2`` (``iceberg-spark-runtime-4.0_2.13``
on Spark 4) through ``--packages``. Never ship this file.

Maven Central is unreachable from the project's machines, PyPI is. The wheel
``snowpark-connect-deps-iceberg==1.0.3`` (hash-pinned, kept in ``<dest>/wheels``) carries the
official runtime jar minus its shaded Jackson (``org.apache.iceberg.shaded.com.fasterxml.jackson``).
pyspark 3.5.9's own Jackson 2.15.2 jars (hash-pinned) are relocated into that package as
maven-shade does: each class's CONSTANT_Utf8 entries get the prefix on ``com/fasterxml/jackson``
and ``com.fasterxml.jackson``; ``META-INF/services`` files likewise. Jackson's
``META-INF/versions`` classes are left out: the Iceberg jar is not Multi-Release, so no JVM would
load them. The zip is deterministic (sorted, fixed times); its content digest (names and bytes,
independent of the zlib build) is pinned and, with the file's sha256, recorded in ``<jar>.sha256``.
With a verified jar in the cache it does nothing. ``--check`` only verifies (exit 1 if not).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / ".cache" / "jars"
JAR_NAME = "iceberg-spark-runtime-3.5_2.12-1.10.2-standin.jar"

WHEEL = "snowpark-connect-deps-iceberg==1.0.3"
WHEEL_FILE = "snowpark_connect_deps_iceberg-1.0.3-py3-none-any.whl"
WHEEL_SHA256 = "4f280e3677ab8d3a89f16647fc392ab2a3d48369f0c48873fe07bc1e74e06ffc"
MEMBER = "snowpark_connect_deps_iceberg/jars/iceberg-spark-runtime-3.5_2.12-1.10.2.jar"
MEMBER_SHA256 = "5b30080c7bbbced0fb0900894b7ea0200b1bbb2e4c355ebe727baafaf49c16f6"
#: pyspark 3.5.9's ``pyspark/jars/jackson-{name}-2.15.2.jar`` -> sha256.
JACKSON = {
    "core": "303c99e82b1faa91a0bae5d8fbeb56f7e2adf9b526a900dd723bf140d62bd4b4",
    "databind": "0eb2fdad6e40ab8832a78c9b22f58196dd970594e8d3d5a26ead87847c4f3a96",
    "annotations": "04e21f94dcfee4b078fa5a5f53047b785aaba69d19de392f616e7a7fe5d3882f",
    "datatype-jsr310": "7574c81ad570476ef6aad26f419288fd466733f3315bee3012f2f29c9dc008c8",
}
#: sha256 over the output's (name, sha256(uncompressed bytes)) in entry order.
CONTENT_SHA256 = "1dc1ac3f30185623385b3bd3f00bf62940add428639eabeb3c1b0ae6d66238da"

SHADE = "org/apache/iceberg/shaded/"
_SLASHED = re.compile(rb"(?<!org/apache/iceberg/shaded/)com/fasterxml/jackson")
_DOTTED = re.compile(rb"(?<!org\.apache\.iceberg\.shaded\.)com\.fasterxml\.jackson")
#: constant-pool tag -> size after the tag byte (Utf8, tag 1, is variable-length).
_CP_SIZES = {3: 4, 4: 4, 5: 8, 6: 8, 7: 2, 8: 2, 9: 4, 10: 4, 11: 4, 12: 4, 15: 3, 16: 2}
_CP_SIZES.update({17: 4, 18: 4, 19: 2, 20: 2})
_TIME, _MANIFEST = (1980, 2, 1, 0, 0, 0), "META-INF/MANIFEST.MF"


def jar_path(dest: Path = DEFAULT_DEST) -> Path:
    return dest / JAR_NAME


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_path(dest: Path = DEFAULT_DEST) -> Path:
    """``<sha256 of the jar> <pinned content digest> <name>``, written by a checked build."""
    return dest / f"{JAR_NAME}.sha256"


def verified(dest: Path) -> bool:
    """True when the jar in ``dest`` is the one a build checked against today's pin recorded."""
    jar, record = jar_path(dest), record_path(dest)
    if not (jar.is_file() and record.is_file()):
        return False
    return record.read_text().split()[:2] == [sha256(jar), CONTENT_SHA256]


def relocate_text(text: bytes) -> bytes:
    text = _SLASHED.sub(SHADE.encode() + b"com/fasterxml/jackson", text)
    return _DOTTED.sub(SHADE.replace("/", ".").encode() + b"com.fasterxml.jackson", text)


def relocate_class(data: bytes) -> bytes:
    """The class file with every CONSTANT_Utf8 entry relocated; the rest byte for byte."""
    if data[:4] != b"\xca\xfe\xba\xbe":
        raise ValueError("not a class file")
    count, pos, index = int.from_bytes(data[8:10], "big"), 10, 1
    out = bytearray(data[:10])
    while index < count:
        tag = data[pos]
        if tag == 1:
            end = pos + 3 + int.from_bytes(data[pos + 1 : pos + 3], "big")
            text = relocate_text(data[pos + 3 : end])
            if len(text) > 0xFFFF:
                raise ValueError("relocated CONSTANT_Utf8 is too long")
            out += b"\x01" + len(text).to_bytes(2, "big") + text
            pos = end
        elif tag in _CP_SIZES:
            out += data[pos : pos + 1 + _CP_SIZES[tag]]
            pos += 1 + _CP_SIZES[tag]
            index += tag in (5, 6)  # Long and Double take two slots
        else:
            raise ValueError(f"unknown constant-pool tag {tag} at byte {pos}")
        index += 1
    return bytes(out + data[pos:])


def relocated_jackson(jars: list[Path]) -> dict[str, bytes]:
    """Entry name -> bytes: the jars' classes and service files, relocated."""
    entries: dict[str, bytes] = {}
    for jar in jars:
        with zipfile.ZipFile(jar) as zf:
            for name in zf.namelist():
                if name.startswith("com/fasterxml/jackson/") and name.endswith(".class"):
                    new, data = SHADE + name, relocate_class(zf.read(name))
                elif name.startswith("META-INF/services/com.fasterxml.jackson."):
                    new = relocate_text(name.encode()).decode()
                    data = relocate_text(zf.read(name))
                else:  # directories, META-INF (incl. versions/, module-info), licenses
                    continue
                if new in entries:
                    raise SystemExit(f"build_iceberg_jar: {new} is in two Jackson jars")
                entries[new] = data
    return entries


def cached_wheel(dest: Path, workdir: Path) -> Path:
    """The pinned wheel, kept in ``dest/wheels``: ``pip download`` (hash-pinned) when not there."""
    wheel = dest / "wheels" / WHEEL_FILE
    if wheel.is_file() and sha256(wheel) == WHEEL_SHA256:
        return wheel  # offline from here on
    req = workdir / "requirements.txt"
    req.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary"]
    cmd += [":all:", "--require-hashes", "-r", str(req), "-d", str(wheel.parent)]
    if subprocess.run(cmd, check=False, stdout=sys.stderr).returncode:  # stdout: the path only
        raise SystemExit(f"build_iceberg_jar: pip download of {WHEEL} failed (see above)")
    if not wheel.is_file() or sha256(wheel) != WHEEL_SHA256:
        raise SystemExit(f"build_iceberg_jar: {wheel} is missing or not its pinned sha256")
    return wheel


def jackson_jars() -> list[Path]:
    """pyspark's Jackson jars, each checked against its pinned sha256."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("build_iceberg_jar: pyspark is not installed in this interpreter")
    jars = Path(next(iter(spec.submodule_search_locations))) / "jars"
    for name, expected in JACKSON.items():
        jar = jars / f"jackson-{name}-2.15.2.jar"
        if not jar.is_file() or sha256(jar) != expected:
            raise SystemExit(f"build_iceberg_jar: {jar} is missing or not pyspark 3.5.9's")
    return [jars / f"jackson-{name}-2.15.2.jar" for name in JACKSON]


def build(wheel: Path, dest: Path, workdir: Path) -> None:
    """Write the stand-in jar (temp name, then rename) and its recorded sha256."""
    runtime = workdir / "runtime.jar"
    with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, runtime.open("wb") as f:
        shutil.copyfileobj(src, f, 1 << 20)
    if sha256(runtime) != MEMBER_SHA256:
        raise SystemExit(f"build_iceberg_jar: {MEMBER} in the wheel is not its pinned sha256")
    extra = relocated_jackson(jackson_jars())
    dest.mkdir(parents=True, exist_ok=True)
    partial, digest = dest / f".{JAR_NAME}.partial", hashlib.sha256()
    with zipfile.ZipFile(runtime) as base:
        names = {n for n in base.namelist() if not n.endswith("/")}  # LICENSE, NOTICE: twice
        if clash := sorted(names & extra.keys()):
            raise SystemExit(f"build_iceberg_jar: relocated entries clash with the jar's: {clash}")
        with zipfile.ZipFile(partial, "w") as out:  # sorted, fixed times: deterministic
            for name in sorted(names | extra.keys(), key=lambda n: (n != _MANIFEST, n)):
                data = extra[name] if name in extra else base.read(name)
                info = zipfile.ZipInfo(name, _TIME)
                info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
                out.writestr(info, data)
                digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    if (got := digest.hexdigest()) != CONTENT_SHA256:
        partial.unlink()
        raise SystemExit(f"build_iceberg_jar: content sha256 {got}, expected {CONTENT_SHA256}")
    os.replace(partial, jar_path(dest))
    record_path(dest).write_text(f"{sha256(jar_path(dest))} {CONTENT_SHA256} {JAR_NAME}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    parser.add_argument("--check", action="store_true", help="only verify the cache")
    args = parser.parse_args(argv)
    dest: Path = args.dest
    if not verified(dest):
        if args.check:
            print(f"iceberg jar: missing or not verified in {dest}", file=sys.stderr)
            return 1
        with tempfile.TemporaryDirectory(prefix="iceberg-jar-") as tmp:
            build(cached_wheel(dest, Path(tmp)), dest, Path(tmp))
        print(f"iceberg jar (test stand-in): built and verified into {dest}", file=sys.stderr)
    print(jar_path(dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
