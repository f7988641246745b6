"""Session settings: prodclf's < a job's own (Iceberg's) < ``spark.conf``; extensions add up."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pyspark
import pytest
from conftest import ROOT

from prodclf.config import ICEBERG_EXTENSIONS, TableFormatConfig
from prodclf.session import EXTENSIONS, append_extensions, resolve

pytestmark = pytest.mark.spark4

ICEBERG = TableFormatConfig(format="iceberg", catalog="rest", catalog_uri="http://c:8181")


def test_the_launchers_settings_stay_and_only_correctness_is_forced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    launcher = {
        "spark.sql.parquet.compression.codec": "snappy",  # a cluster default: kept
        "spark.sql.catalogImplementation": "hive",  # not even mentioned: kept
        "spark.sql.session.timeZone": "America/New_York",  # breaks run dates: replaced
        "spark.jars": "/opt/cluster.jar",
        "spark.app.name": "from-spark-submit",
    }
    own = {"spark.app.name": "prodclf-tag", "spark.jars": "/opt/ours.jar"}
    got = resolve(launcher, own, {})
    assert "spark.sql.parquet.compression.codec" not in got
    assert "spark.sql.catalogImplementation" not in got
    assert "spark.app.name" not in got  # spark-submit --name wins
    assert got["spark.sql.session.timeZone"] == "UTC"
    assert "the launcher's America/New_York is replaced" in caplog.text
    assert got["spark.jars"] == "/opt/cluster.jar,/opt/ours.jar"
    assert got["spark.python.worker.reuse"] == "true"  # a default the launcher left unset
    # Alone, prodclf's defaults and requirements apply.
    alone = resolve({}, own, {})
    assert alone["spark.sql.parquet.compression.codec"] == "zstd"
    assert alone["spark.app.name"] == "prodclf-tag"


def test_iceberg_extensions_are_appended_to_the_launchers() -> None:
    extra = ICEBERG.spark_settings()
    alone = resolve({}, {}, extra)
    assert {k: alone[k] for k in extra} == extra
    assert alone[EXTENSIONS] == ICEBERG_EXTENSIONS
    got = resolve({EXTENSIONS: "com.example.Launcher"}, {}, extra)
    assert got[EXTENSIONS] == f"com.example.Launcher,{ICEBERG_EXTENSIONS}"
    # Without extensions of the job's, the launcher's are left alone.
    assert EXTENSIONS not in resolve({EXTENSIONS: "c.D"}, {}, {})


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
@pytest.mark.skipif(
    not pyspark.__version__.startswith("3.5"), reason="the Iceberg stand-in runtime is Spark 3.5's"
)
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


SUBMITTED = r"""
import json, logging, sys
from prodclf.cli import build_config, build_parser
from prodclf.session import create_session

logging.basicConfig(level=logging.WARNING)

cfg = build_config(build_parser().parse_args(sys.argv[1:]))
spark = create_session(cfg.spark)
conf = dict(spark.sparkContext.getConf().getAll())
keys = [
    "spark.sql.catalogImplementation", "spark.sql.parquet.compression.codec", "spark.jars",
    "spark.driver.extraJavaOptions", "spark.sql.shuffle.partitions", "spark.app.name",
    "spark.sql.session.timeZone", "spark.python.worker.reuse",
]
out = {k: conf.get(k) for k in keys}
root = spark.sparkContext._jvm.org.apache.logging.log4j.LogManager.getRootLogger()
out["log_level"] = root.getLevel().toString()
spark.stop()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("command", ["tag", "train", "evaluate", "report", "vacuum", "migrate"])
def test_under_spark_submit_the_clusters_settings_survive_and_conf_applies(
    tmp_path: Path, command: str
) -> None:
    """spark-submit's --conf, --jars, --name and properties file, and the cluster's log4j,
    stay; the command's own --conf applies; only prodclf's correctness settings are forced."""
    props = tmp_path / "cluster.conf"
    props.write_text(
        "spark.sql.catalogImplementation   hive\n"
        "spark.sql.session.timeZone        America/New_York\n"
        "spark.hadoop.javax.jdo.option.ConnectionURL "
        f"jdbc:derby:;databaseName={tmp_path}/ms;create=true\n"
    )
    log4j = tmp_path / "log4j2.properties"
    log4j.write_text(
        "rootLogger.level = error\nrootLogger.appenderRef.stderr.ref = console\n"
        "appender.console.type = Console\nappender.console.name = console\n"
    )
    script = tmp_path / "submitted.py"
    script.write_text(SUBMITTED)
    lib = tmp_path / "lib"
    args = {
        "tag": [
            "--base-library",
            str(tmp_path / "b"),
            "--commodity-library",
            str(lib),
            "--model",
            str(tmp_path / "m"),
            "--run-date",
            "2026-11-20",
        ],
        "train": ["--base-library", str(tmp_path / "b"), "--model-out", str(tmp_path / "m")],
        "vacuum": ["--commodity-library", str(lib), "--keep-days", "3"],
        "report": ["--commodity-library", str(lib), "r1"],
        "migrate": ["--commodity-library", str(lib)],
        "evaluate": [
            "--labels",
            str(tmp_path / "l"),
            "--commodity-library",
            str(lib),
            "--run-date",
            "2026-11-20",
            "--out",
            str(tmp_path / "o"),
        ],
    }[command]
    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_SUBMIT_ARGS", "SPARK_HOME")}
    env.update(
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        PRODCLF_SPARK_JARS=str(tmp_path / "ours.jar"),
    )
    argv = [
        str(submit),
        "--master",
        "local[1]",
        "--name",
        "cluster-named",
        "--properties-file",
        str(props),
        "--conf",
        "spark.sql.parquet.compression.codec=snappy",
        "--conf",
        "spark.ui.enabled=false",
        "--jars",
        str(tmp_path / "cluster.jar"),
        "--driver-java-options",
        f"-Dlog4j.configurationFile={log4j} -Dprodclf.check=1",
        str(script),
        command,
        *args,
        "--conf",
        "spark.sql.shuffle.partitions=7",
    ]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    got = json.loads(lines[-1].removeprefix("RESULT "))
    assert got["spark.sql.catalogImplementation"] == "hive"
    assert got["spark.sql.parquet.compression.codec"] == "snappy"
    assert got["spark.app.name"] == "cluster-named"
    assert got["log_level"] == "ERROR"
    assert "-Dprodclf.check=1" in got["spark.driver.extraJavaOptions"]
    jars = got["spark.jars"]
    assert "cluster.jar" in jars and "ours.jar" in jars
    assert got["spark.sql.shuffle.partitions"] == "7"  # the command's own --conf
    assert got["spark.sql.session.timeZone"] == "UTC"  # correctness: forced, and logged
    # (spark-submit merges the Python driver's stderr into its stdout)
    assert "the launcher's America/New_York is replaced" in proc.stdout + proc.stderr
    assert got["spark.python.worker.reuse"] == "true"  # prodclf's default, unset by the launcher
