"""Session settings: prodclf's < a job's own (Iceberg's) < ``spark.conf``; extensions add up."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from prodclf.config import ICEBERG_EXTENSIONS, TableFormatConfig
from prodclf.session import EXTENSIONS, append_extensions, layered_settings

pytestmark = pytest.mark.spark4

ICEBERG = TableFormatConfig(format="iceberg", catalog="rest", catalog_uri="http://c:8181")


def test_a_jobs_settings_come_after_prodclfs_and_before_the_users() -> None:
    base = {"spark.sql.session.timeZone": "UTC", "spark.a": "prodclf", "spark.b": "prodclf"}
    extra = {"spark.a": "job", "spark.b": "job", "spark.c": "job"}
    user = {"spark.b": "user"}
    assert layered_settings(base, extra, user) == {
        "spark.sql.session.timeZone": "UTC",
        "spark.a": "job",
        "spark.b": "user",
        "spark.c": "job",
    }
    assert layered_settings(base, {}, {}) == base


def test_iceberg_extensions_are_appended_to_the_users_or_the_launchers() -> None:
    extra = ICEBERG.spark_settings()
    alone = layered_settings({}, extra, {})
    assert alone == extra  # the catalog's settings and the extensions, nothing else
    assert alone[EXTENSIONS] == ICEBERG_EXTENSIONS
    user = {EXTENSIONS: "io.delta.sql.DeltaSparkSessionExtension"}
    got = layered_settings({}, extra, user, launcher_extensions="com.example.Launcher")
    # The user's value replaces the launcher's (as any setting of spark.conf), ours is added.
    assert got[EXTENSIONS] == f"io.delta.sql.DeltaSparkSessionExtension,{ICEBERG_EXTENSIONS}"
    got = layered_settings({}, extra, {}, launcher_extensions="com.example.Launcher")
    assert got[EXTENSIONS] == f"com.example.Launcher,{ICEBERG_EXTENSIONS}"
    # A user's catalog setting wins over the job's.
    user = {"spark.sql.catalog.prodclf.uri": "http://other:8181"}
    assert layered_settings({}, extra, user)["spark.sql.catalog.prodclf.uri"] == "http://other:8181"
    # Without extensions of the job's, the user's (or the launcher's) are left alone.
    assert layered_settings({}, {}, {EXTENSIONS: "a.B"}, "c.D") == {EXTENSIONS: "a.B"}


def test_append_extensions() -> None:
    assert append_extensions(None, "a.B") == "a.B"
    assert append_extensions("", "a.B") == "a.B"
    assert append_extensions("x.Y", "a.B") == "x.Y,a.B"
    assert append_extensions(" x.Y , a.B ", "a.B") == "x.Y,a.B"  # already there: not twice
    assert append_extensions("x.Y,,", "a.B, c.D") == "x.Y,a.B,c.D"


SCRIPT = r"""
import json, sys
from prodclf.config import SparkConfig, TableFormatConfig
from prodclf.session import create_session

warehouse = sys.argv[1]
spark = create_session(
    SparkConfig(master="local[1]", app_name="prodclf-ext", conf=(("spark.ui.enabled", "false"),)),
    extra=TableFormatConfig(format="iceberg").spark_settings(),
)
out = {"extensions": spark.sparkContext.getConf().get("spark.sql.extensions")}
# The hadoop catalog is registered at run time; MERGE INTO needs Iceberg's extensions loaded.
spark.conf.set("spark.sql.catalog.lib", "org.apache.iceberg.spark.SparkCatalog")
spark.conf.set("spark.sql.catalog.lib.type", "hadoop")
spark.conf.set("spark.sql.catalog.lib.warehouse", warehouse)
spark.sql("CREATE TABLE lib.prodclf.t (id INT, v STRING) USING iceberg")
spark.sql("INSERT INTO lib.prodclf.t VALUES (1, 'a'), (2, 'b')")
spark.sql("CREATE TEMP VIEW s AS SELECT * FROM VALUES (2, 'B'), (3, 'c') AS s(id, v)")
spark.sql(
    "MERGE INTO lib.prodclf.t t USING s ON t.id = s.id "
    "WHEN MATCHED THEN UPDATE SET t.v = s.v WHEN NOT MATCHED THEN INSERT *"
)
out["rows"] = sorted(tuple(r) for r in spark.sql("SELECT * FROM lib.prodclf.t").collect())
spark.stop()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_an_iceberg_session_keeps_the_launchers_extensions(tmp_path: Path) -> None:
    """spark-defaults.conf's extensions stay; Iceberg's are added and work (MERGE INTO)."""
    spec = importlib.util.spec_from_file_location(
        "build_iceberg_jar", ROOT / "infra" / "build_iceberg_jar.py"
    )
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    jar = builder.jar_path()
    if not builder.verified(jar.parent):  # the jar, as its checked build recorded it
        if os.environ.get("CI"):
            pytest.fail("the Iceberg stand-in jar is not built: `make iceberg-jar` must run first")
        pytest.skip("Iceberg stand-in jar not built: run `make iceberg-jar`")
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    # A class that is not there: Spark warns and goes on; what matters is that it is kept.
    (conf_dir / "spark-defaults.conf").write_text(
        "spark.sql.extensions  com.example.LauncherExtensions\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_SUBMIT_ARGS", "SPARK_HOME")}
    env.update(SPARK_CONF_DIR=str(conf_dir), PRODCLF_SPARK_JARS=str(jar))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "warehouse")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    assert out["extensions"] == f"com.example.LauncherExtensions,{ICEBERG_EXTENSIONS}"
    assert out["rows"] == [[1, "a"], [2, "B"], [3, "c"]]
