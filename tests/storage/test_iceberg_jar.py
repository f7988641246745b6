"""The TEST STAND-IN Iceberg runtime jar (``make iceberg-jar``, infra/build_iceberg_jar.py).

The relocation of pyspark's Jackson into Iceberg's shaded package is checked on the real
Jackson classes (fast); then the built jar runs Iceberg's SQL on pyspark 3.5: a Hadoop-catalog
table, INSERT, MERGE INTO ... WHEN NOT MATCHED BY SOURCE, the ``.snapshots`` metadata table,
VERSION AS OF, CALL system.expire_snapshots. That runs in a separate Python process with its own
local SparkSession: the suite's session (no Iceberg) is left alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ROOT


def _load_builder() -> ModuleType:
    path = ROOT / "infra" / "build_iceberg_jar.py"
    spec = importlib.util.spec_from_file_location("build_iceberg_jar", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = _load_builder()
JAR = builder.jar_path()
SHADED = "org/apache/iceberg/shaded/com/fasterxml/jackson/"
#: "com/fasterxml/jackson" or its dotted form, not already behind the shade prefix.
UNSHADED = re.compile(
    rb"(?<!org/apache/iceberg/shaded/)com/fasterxml/jackson"
    rb"|(?<!org\.apache\.iceberg\.shaded\.)com\.fasterxml\.jackson"
)


def _utf8_and_this_class(data: bytes) -> tuple[list[bytes], bytes]:
    """The CONSTANT_Utf8 strings and this_class's name, read independently of the builder."""
    sizes = {3: 4, 4: 4, 5: 8, 6: 8, 7: 2, 8: 2, 9: 4, 10: 4, 11: 4, 12: 4, 15: 3, 16: 2}
    sizes |= {17: 4, 18: 4, 19: 2, 20: 2}
    count, pos, index = int.from_bytes(data[8:10], "big"), 10, 1
    entries: dict[int, tuple[int, bytes]] = {}
    while index < count:
        tag = data[pos]
        size = int.from_bytes(data[pos + 1 : pos + 3], "big") + 2 if tag == 1 else sizes[tag]
        entries[index] = (tag, data[pos + 1 : pos + 1 + size])
        pos += 1 + size
        index += 2 if tag in (5, 6) else 1
    this = entries[int.from_bytes(data[pos + 2 : pos + 4], "big")]
    assert this[0] == 7, "this_class is not a CONSTANT_Class: the constant pool is misaligned"
    name = entries[int.from_bytes(this[1], "big")]
    return [v[2:] for t, v in entries.values() if t == 1], name[1][2:]


def test_relocation_of_pyspark_jackson() -> None:
    """Every Jackson class, relocated: no unshaded reference left, and a well-formed pool."""
    jars = builder.jackson_jars()  # pyspark's, checked against their pinned sha256
    entries = builder.relocated_jackson(jars)
    classes = {n: d for n, d in entries.items() if n.endswith(".class")}
    assert len(classes) > 900 and all(n.startswith(SHADED) for n in classes)
    for name, data in classes.items():
        strings, this = _utf8_and_this_class(data)
        assert this.decode() + ".class" == name
        assert not [s for s in strings if UNSHADED.search(s)], name
        assert not UNSHADED.search(data), name
    # One class by hand: its string constants name other Jackson classes in dotted form.
    with zipfile.ZipFile(next(j for j in jars if "databind" in j.name)) as zf:
        original = zf.read("com/fasterxml/jackson/databind/ext/OptionalHandlerFactory.class")
    relocated = builder.relocate_class(original)
    strings, _ = _utf8_and_this_class(relocated)
    assert b"org.apache.iceberg.shaded.com.fasterxml.jackson.databind.ext.DOMSerializer" in strings
    assert b"org/apache/iceberg/shaded/com/fasterxml/jackson/databind/JavaType" in strings
    assert len(strings) == len(_utf8_and_this_class(original)[0])
    services = {n: d for n, d in entries.items() if n.startswith("META-INF/services/")}
    assert services == {
        "META-INF/services/org.apache.iceberg.shaded.com.fasterxml.jackson.core.JsonFactory": (
            b"org.apache.iceberg.shaded.com.fasterxml.jackson.core.JsonFactory\n"
        ),
        "META-INF/services/org.apache.iceberg.shaded.com.fasterxml.jackson.core.ObjectCodec": (
            b"org.apache.iceberg.shaded.com.fasterxml.jackson.databind.ObjectMapper\n"
        ),
        "META-INF/services/org.apache.iceberg.shaded.com.fasterxml.jackson.databind.Module": (
            b"org.apache.iceberg.shaded.com.fasterxml.jackson.datatype.jsr310.JavaTimeModule\n"
        ),
    }


SCRIPT = r"""
import json, sys
from pyspark.sql import SparkSession

jar, warehouse = sys.argv[1], sys.argv[2]
spark = (
    SparkSession.builder.master("local[1]")
    .appName("iceberg-standin")
    .config("spark.jars", jar)
    .config("spark.ui.enabled", "false")
    .config("spark.sql.shuffle.partitions", "1")
    .config("spark.sql.session.timeZone", "UTC")
    .config("spark.sql.extensions",
            "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions")
    .config("spark.sql.catalog.lake", "org.apache.iceberg.spark.SparkCatalog")
    .config("spark.sql.catalog.lake.type", "hadoop")
    .config("spark.sql.catalog.lake.warehouse", warehouse)
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")
rows = lambda sql: sorted(tuple(r) for r in spark.sql(sql).collect())
out = {}
spark.sql("CREATE TABLE lake.db.tags (id INT, label STRING) USING iceberg")
spark.sql("INSERT INTO lake.db.tags VALUES (1, 'a'), (2, 'b'), (3, 'c')")
spark.sql("CREATE TEMP VIEW src AS SELECT * FROM VALUES (2, 'B'), (4, 'd') AS s(id, label)")
spark.sql(
    "MERGE INTO lake.db.tags t USING src s ON t.id = s.id "
    "WHEN MATCHED THEN UPDATE SET t.label = s.label "
    "WHEN NOT MATCHED THEN INSERT * "
    "WHEN NOT MATCHED BY SOURCE THEN DELETE"
)
out["merged"] = rows("SELECT id, label FROM lake.db.tags")
snaps = spark.sql(
    "SELECT snapshot_id, operation FROM lake.db.tags.snapshots ORDER BY committed_at"
).collect()
out["operations"] = [s.operation for s in snaps]
first = snaps[0].snapshot_id
out["as_of_first"] = rows(f"SELECT id, label FROM lake.db.tags VERSION AS OF {first}")
expired = spark.sql(
    "CALL lake.system.expire_snapshots(table => 'db.tags', "
    "older_than => TIMESTAMP '2999-01-01 00:00:00', retain_last => 1)"
).collect()[0].asDict()
out["expired"] = {k: int(v) for k, v in expired.items()}
out["snapshots_after"] = spark.sql("SELECT * FROM lake.db.tags.snapshots").count()
out["current_after"] = rows("SELECT id, label FROM lake.db.tags")
try:
    spark.sql(f"SELECT * FROM lake.db.tags VERSION AS OF {first}").collect()
    out["first_after"] = "readable"
except Exception as exc:
    out["first_after"] = type(exc).__name__ + ": " + str(exc).splitlines()[0]
spark.stop()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_iceberg_sql_on_the_standin_jar(tmp_path: Path) -> None:
    if not builder.verified(JAR.parent):  # the jar, as its checked build recorded it
        if os.environ.get("CI"):
            pytest.fail("the Iceberg stand-in jar is not built: `make iceberg-jar` must run first")
        pytest.skip("Iceberg stand-in jar not built: run `make iceberg-jar`")
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_SUBMIT_ARGS", "SPARK_HOME")}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(JAR), str(tmp_path / "warehouse")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    assert out["merged"] == [[2, "B"], [4, "d"]]
    assert out["operations"] == ["append", "overwrite"]
    assert out["as_of_first"] == [[1, "a"], [2, "b"], [3, "c"]]
    assert out["expired"]["deleted_data_files_count"] == 1  # the first snapshot's data file
    assert out["expired"]["deleted_manifest_lists_count"] == 1
    assert out["snapshots_after"] == 1
    assert out["current_after"] == [[2, "B"], [4, "d"]]
    assert "Cannot find snapshot" in out["first_after"], out["first_after"]
    table = tmp_path / "warehouse" / "db" / "tags"
    assert len(list((table / "data").glob("*.parquet"))) == 1  # the merge's rewrite
    # Table metadata is written with the relocated Jackson: valid JSON, the surviving snapshot.
    version = (table / "metadata" / "version-hint.text").read_text().strip()
    metadata = json.loads((table / "metadata" / f"v{version}.metadata.json").read_text())
    assert [s["summary"]["operation"] for s in metadata["snapshots"]] == ["overwrite"]
