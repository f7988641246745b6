"""The job's IAM policy (infra/iam/prodclf-policy.json): lint-clean and least privilege.

parliament (duo-labs) checks the grammar, actions, resource formats and conditions; the
rest asserts this project's rule: the job writes and deletes only under the commodity
library's prefix, and reads only what it must (base library, images, models).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
from conftest import ROOT

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # parliament imports pkg_resources
    import parliament

POLICY = ROOT / "infra" / "iam" / "prodclf-policy.json"
COMMODITY = "arn:aws:s3:::example-catalog/commodity/tags/"
READ_LEVELS = {"Read", "List"}


def statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    found = policy["Statement"]
    return found if isinstance(found, list) else [found]


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def access_level(action: str) -> str:
    """IAM's access level of ``service:Action`` (Read, List, Write, Tagging, ...)."""
    service, name = action.split(":")
    (definition,) = [d for d in parliament.iam_definition if d["prefix"] == service]
    for privilege in definition["privileges"]:
        if privilege["privilege"].lower() == name.lower():
            return str(privilege["access_level"])
    raise AssertionError(f"unknown action {action}")


def findings(text: str) -> list[tuple[str, Any]]:
    return [(f.issue, f.detail) for f in parliament.analyze_policy_string(text).findings]


def test_parliament_finds_nothing() -> None:
    assert findings(POLICY.read_text()) == []


def test_parliament_is_live() -> None:
    """A misspelt action and an object action on a bucket ARN are reported."""
    policy = json.loads(POLICY.read_text())
    policy["Statement"][2]["Action"] = "s3:GetObjekt"
    assert [i for i, _ in findings(json.dumps(policy))] == ["UNKNOWN_ACTION"]
    policy = json.loads(POLICY.read_text())
    policy["Statement"][2]["Resource"] = "arn:aws:s3:::example-catalog"
    assert [i for i, _ in findings(json.dumps(policy))] == ["RESOURCE_MISMATCH"]


def write_grants(policy: dict[str, Any]) -> list[tuple[str, str]]:
    """(action, resource) for every non-read action the policy allows."""
    grants = []
    for st in statements(policy):
        assert st["Effect"] == "Allow"
        assert "NotAction" not in st and "NotResource" not in st, "only explicit grants"
        for action in as_list(st["Action"]):
            assert "*" not in action, f"wildcard action {action}"
            if access_level(action) not in READ_LEVELS:
                grants += [(action, r) for r in as_list(st["Resource"])]
    return grants


def test_no_write_outside_the_commodity_prefix() -> None:
    grants = write_grants(json.loads(POLICY.read_text()))
    assert {a for a, _ in grants} == {
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
    }
    outside = [(a, r) for a, r in grants if not r.startswith(COMMODITY)]
    assert outside == []


def test_a_write_outside_the_commodity_prefix_is_caught() -> None:
    policy = json.loads(POLICY.read_text())
    policy["Statement"][2]["Action"] = ["s3:GetObject", "s3:PutObject"]  # base library
    with pytest.raises(AssertionError):
        assert [g for g in write_grants(policy) if not g[1].startswith(COMMODITY)] == []


def test_reads_are_limited_to_the_job_inputs() -> None:
    resources = {
        r for st in statements(json.loads(POLICY.read_text())) for r in as_list(st["Resource"])
    }
    assert all(r.startswith("arn:aws:s3:::example-") for r in resources)
    assert "arn:aws:s3:::example-catalog/*" not in resources  # not the whole catalog bucket
