"""The Kubernetes manifests in infra/k8s, checked offline.

Spark operator documents are validated against the operator's own CRD schemas
(``../shared/schemas/spark-operator``), made strict: OpenAPI v3 lets unknown fields through,
so every object schema that lists ``properties`` (and neither ``additionalProperties`` nor
``x-kubernetes-preserve-unknown-fields``) gets ``additionalProperties: false`` and a
misspelt field fails, as it would be pruned, silently, by the API server.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import ROOT, SHARED

K8S = ROOT / "infra" / "k8s"
CRDS = SHARED / "schemas" / "spark-operator"
SPARK_DEFAULTS = ROOT / "infra" / "spark" / "spark-defaults.conf"
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
#: libyaml when present: the CRDs are 13,000 lines each.
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: envsubst values for the backfill template (it is a template, not a manifest).
TEMPLATE_VALUES = {
    "RUN_NAME": "2026-11-21-shoes",
    "RUN_DATE": "2026-11-21",
    "MODEL": "s3://example-models/prodclf/v4",
    "SELECTION_FLAG": "--where",
    "SELECTION_VALUE": "category_hint = 'shoes'",
}


def load_docs(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    for key, value in TEMPLATE_VALUES.items():
        text = text.replace("${" + key + "}", value)
    assert "${" not in text, f"{path.name}: an unset template variable"
    return [d for d in yaml.safe_load_all(text) if d is not None]


def all_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in sorted(K8S.glob("*.yaml")) for d in load_docs(p)]


def strict(schema: Any) -> Any:
    """A copy of ``schema`` where objects with listed properties reject any other key."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        isinstance(schema.get("properties"), dict)
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The strict openAPIV3Schema of the served, stored v1beta2 version of ``kind``."""
    for path in CRDS.glob("*.yaml"):
        crd = yaml.load(path.read_text(), Loader=FAST_LOADER)
        if crd["spec"]["names"]["kind"] != kind:
            continue
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta2"]
        assert version["served"] and version["storage"]
        return strict(version["schema"]["openAPIV3Schema"])
    raise AssertionError(f"no CRD for {kind} in {CRDS}")


def validate(doc: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``doc`` does not fit its kind's CRD."""
    assert doc["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    schema = crd_schema(doc["kind"])
    # metadata is the API server's ObjectMeta, not described by the CRD beyond "object".
    jsonschema.Draft7Validator(schema).validate(doc)


def spark_docs() -> list[tuple[str, dict[str, Any]]]:
    kinds = {"SparkApplication", "ScheduledSparkApplication"}
    return [(n, d) for n, d in all_docs() if d["kind"] in kinds]


def app_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The SparkApplication spec of an application or of a schedule's template."""
    return doc["spec"]["template"] if doc["kind"] == "ScheduledSparkApplication" else doc["spec"]


def test_the_manifests_hold_the_expected_documents() -> None:
    kinds = sorted((n, d["kind"]) for n, d in all_docs())
    assert kinds == [
        ("backfill.yaml", "SparkApplication"),
        ("nightly.yaml", "ScheduledSparkApplication"),
        ("rbac.yaml", "Role"),
        ("rbac.yaml", "RoleBinding"),
        ("rbac.yaml", "ServiceAccount"),
    ]


@pytest.mark.parametrize("name,doc", spark_docs(), ids=lambda v: v if isinstance(v, str) else "")
def test_spark_operator_documents_fit_the_crd_schema(name: str, doc: dict[str, Any]) -> None:
    validate(doc)


def test_a_misspelt_field_fails_validation() -> None:
    doc = copy.deepcopy(dict(spark_docs())["nightly.yaml"])
    executor = doc["spec"]["template"]["executor"]
    executor["memoryOverHead"] = executor.pop("memoryOverhead")  # capital H
    with pytest.raises(jsonschema.ValidationError, match="memoryOverHead"):
        validate(doc)
    top = copy.deepcopy(dict(spark_docs())["backfill.yaml"])
    top["spec"]["mainApplicationfile"] = top["spec"].pop("mainApplicationFile")
    with pytest.raises(jsonschema.ValidationError):
        validate(top)


def test_a_wrong_type_fails_validation() -> None:
    doc = copy.deepcopy(dict(spark_docs())["backfill.yaml"])
    doc["spec"]["executor"]["cores"] = "4"  # an integer in the CRD
    with pytest.raises(jsonschema.ValidationError, match="'4' is not of type 'integer'"):
        validate(doc)
    doc = copy.deepcopy(dict(spark_docs())["nightly.yaml"])
    doc["spec"]["template"]["sparkConf"]["spark.sql.shuffle.partitions"] = 200  # not a string
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_strict_keeps_free_form_maps_free() -> None:
    """sparkConf and labels are maps (additionalProperties given): any key stays valid."""
    schema = crd_schema("SparkApplication")["properties"]["spec"]["properties"]
    assert schema["sparkConf"]["additionalProperties"] == {"type": "string"}
    assert schema["driver"]["additionalProperties"] is False


def spark_defaults() -> dict[str, str]:
    """The active properties of infra/spark/spark-defaults.conf."""
    props: dict[str, str] = {}
    for line in SPARK_DEFAULTS.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = re.split(r"\s+", line, maxsplit=1)
            props[key] = value
    return props


#: spark-defaults.conf properties that the operator spells as typed fields.
TYPED = {
    "spark.executor.memory": lambda s: s["executor"]["memory"],
    "spark.executor.memoryOverhead": lambda s: s["executor"]["memoryOverhead"],
    "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": lambda s: {
        e["name"]: e["value"] for e in s["executor"]["env"]
    }["TF_CPP_MIN_LOG_LEVEL"],
}


@pytest.mark.parametrize("name,doc", spark_docs(), ids=lambda v: v if isinstance(v, str) else "")
def test_resources_and_conf_agree_with_spark_defaults(name: str, doc: dict[str, Any]) -> None:
    spec = app_spec(doc)
    defaults = spark_defaults()
    assert defaults["spark.executor.memory"] == "4g"  # the file is read, not skipped
    for key, value in defaults.items():
        if key in TYPED:
            assert TYPED[key](spec) == value, key
        else:
            assert spec["sparkConf"].get(key) == value, key
    assert set(spec["sparkConf"]) <= set(defaults), "sparkConf beyond spark-defaults.conf"
    # submit.sh's defaults for what the file does not set: 4 cores per executor, 2g driver.
    assert spec["executor"]["cores"] == 4
    assert spec["driver"]["memory"] == "2g"
    assert spec["sparkVersion"].startswith("3.5.")


def test_the_jobs_run_the_tag_entry_with_the_modes() -> None:
    docs = dict(spark_docs())
    nightly = app_spec(docs["nightly.yaml"])
    assert nightly["mainApplicationFile"] == "local:///opt/prodclf/infra/k8s/with_run_date.py"
    args = nightly["arguments"]
    assert args[0] == "/opt/prodclf/jobs/tag_catalog.py"
    assert args[args.index("--mode") + 1] == "incremental"
    assert "--run-date" not in args  # added at run time by with_run_date.py
    backfill = app_spec(docs["backfill.yaml"])
    assert backfill["mainApplicationFile"] == "local:///opt/prodclf/jobs/tag_catalog.py"
    bargs = backfill["arguments"]
    assert bargs[bargs.index("--mode") + 1] == "backfill"
    assert bargs[bargs.index("--run-date") + 1] == "2026-11-21"
    assert bargs[bargs.index("--where") + 1] == "category_hint = 'shoes'"
    assert docs["nightly.yaml"]["spec"]["concurrencyPolicy"] == "Forbid"


def test_rbac_gives_the_driver_what_it_needs_and_irsa_credentials() -> None:
    docs = {d["kind"]: d for n, d in all_docs() if n == "rbac.yaml"}
    sa, role, binding = docs["ServiceAccount"], docs["Role"], docs["RoleBinding"]
    assert sa["apiVersion"] == "v1"
    assert re.fullmatch(
        r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+",
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
    )
    assert role["apiVersion"] == binding["apiVersion"] == "rbac.authorization.k8s.io/v1"
    (rule,) = role["rules"]
    assert rule["apiGroups"] == [""]
    assert set(rule["resources"]) == {"pods", "services", "configmaps", "persistentvolumeclaims"}
    assert {"create", "get", "list", "watch", "delete"} <= set(rule["verbs"])
    assert "*" not in rule["verbs"] + rule["resources"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "prodclf"}
    ]
    namespaces = {d["metadata"]["namespace"] for _, d in all_docs()}
    assert namespaces == {"prodclf"}
    for _, doc in spark_docs():
        spec = app_spec(doc)
        assert spec["driver"]["serviceAccount"] == sa["metadata"]["name"]
        assert spec["executor"]["serviceAccount"] == sa["metadata"]["name"]


SECRETISH = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|SESSION)", re.I)


def test_no_credentials_in_the_manifests() -> None:
    for path in sorted(K8S.glob("*.yaml")):
        text = path.read_text()
        assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", text), path.name
        assert "fs.s3a.access.key" not in text and "fs.s3a.secret.key" not in text
    for _, doc in spark_docs():
        spec = app_spec(doc)
        for role in ("driver", "executor"):
            for env in spec[role].get("env", []):
                assert not (SECRETISH.search(env["name"]) and "value" in env), env
            for ref in spec[role].get("envFrom", []):
                assert set(ref) == {"secretRef"}  # credentials only by reference
        assert not any(SECRETISH.search(k) for k in spec["sparkConf"])


def test_with_run_date_adds_the_date_and_runs_the_job(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text("import sys\nprint(sys.argv[1:])\n")
    script = str(K8S / "with_run_date.py")
    out = subprocess.run(
        [sys.executable, script, str(job), "--mode", "incremental"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.fullmatch(r"\['--mode', 'incremental', '--run-date', '\d{4}-\d\d-\d\d'\]\n", out)
    out = subprocess.run(
        [sys.executable, script, str(job), "--run-date", "2026-01-02"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == "['--run-date', '2026-01-02']\n"


def test_the_image_is_built_from_the_pinned_environment() -> None:
    text = DOCKERFILE.read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    tf_pin = re.search(r'"tensorflow-cpu==([\d.]+)"', pyproject)
    assert tf_pin
    assert f"ARG TF_VERSION={tf_pin.group(1)}" in text
    assert "pip install --no-cache-dir -c constraints.txt . $TF" in text
    assert 'gpu) TF="tensorflow[and-cuda]==${TF_VERSION}' in text
    assert "ARG PYTHON_IMAGE=python:3.11-" in text
    assert "apache/spark:3.5.3-" in text  # its entrypoint matches pyspark 3.5.3
    assert re.search(r"^USER 185$", text, re.M)
    for name in ("hadoop-aws-3.3.1.jar", "aws-java-sdk-bundle-1.11.901.jar"):
        assert f".cache/jars/{name}" in text
        assert f"!.cache/jars/{name}" in (ROOT / ".dockerignore").read_text()


def test_the_jobs_bring_the_official_iceberg_runtime() -> None:
    """Production's Iceberg runtime comes from Maven Central (the tests' jar is a stand-in)."""
    for name in ("nightly", "backfill"):
        doc = yaml.safe_load((K8S / f"{name}.yaml").read_text())
        spec = doc["spec"].get("template", doc["spec"])
        runtime = "org.apache.iceberg:iceberg-spark-runtime-3.5_2.12:1.10.2"
        assert runtime in spec["deps"]["packages"]
