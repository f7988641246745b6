"""Object references: parsing, allowlists, dataset locations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prodclf.errors import ErrorCode, RowError
from prodclf.storage.uris import (
    ObjectRef,
    check_allowed,
    is_same_or_inside,
    normalize_location,
    parse_uri,
    spark_location,
)

pytestmark = pytest.mark.spark4


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://images/a/b.jpg", ObjectRef("s3", "images", "a/b.jpg")),
        ("  s3://images/x.png\n", ObjectRef("s3", "images", "x.png")),
        ("S3://images/x.png", ObjectRef("s3", "images", "x.png")),
        ("file:///data/img/x.png", ObjectRef("file", "", "/data/img/x.png")),
        ("file://localhost/data/x.png", ObjectRef("file", "", "/data/x.png")),
        ("file:/data/x.png", ObjectRef("file", "", "/data/x.png")),
        ("file:///data/a%20b.png", ObjectRef("file", "", "/data/a b.png")),
        ("file:///data/./sub/../x.png", ObjectRef("file", "", "/data/x.png")),
    ],
)
def test_parse_uri(uri: str, expected: ObjectRef) -> None:
    assert parse_uri(uri) == expected


def test_object_ref_uri_and_child() -> None:
    s3 = parse_uri("s3://images/catalog/x.png")
    assert s3.uri == "s3://images/catalog/x.png"
    assert ObjectRef("s3", "models", "color").child("bundle.json").uri == (
        "s3://models/color/bundle.json"
    )
    assert ObjectRef("s3", "models", "").child("bundle.json").key == "bundle.json"
    local = parse_uri("file:///data/x.png")
    assert local.uri == "file:///data/x.png"
    assert ObjectRef("file", "", "/m").child("bundle.json").uri == "file:///m/bundle.json"


@pytest.mark.parametrize(
    "uri",
    [
        None,
        "",
        "   ",
        42,
        "s3://bucket",
        "s3://bucket/",
        "s3:///key.png",
        "s3:/bucket/key.png",
        "s3://bucket/key.png?versionId=3",
        "s3://bucket/key.png#frag",
        "/data/img/x.png",
        "images/x.png",
        "file://otherhost/data/x.png",
        "file:relative/x.png",
    ],
)
def test_malformed_references_are_invalid_uri(uri: object) -> None:
    with pytest.raises(RowError) as info:
        parse_uri(uri)
    assert info.value.code is ErrorCode.INVALID_URI


@pytest.mark.parametrize(
    "uri",
    [
        "http://example.com/x.png",
        "https://cdn.example.com/x.png",
        "s3a://bucket/x.png",
        "gs://bucket/x.png",
        "ftp://host/x.png",
        "data:image/png;base64,iVBORw0KGgo=",
    ],
)
def test_other_schemes_are_not_allowed(uri: str) -> None:
    with pytest.raises(RowError) as info:
        parse_uri(uri)
    assert info.value.code is ErrorCode.URI_NOT_ALLOWED


def test_long_uri_is_clipped_in_the_message() -> None:
    with pytest.raises(RowError) as info:
        parse_uri("s3://bucket/" + "k" * 1000 + "?q=1")
    assert len(info.value.message) < 300


def code_of_check(uri: str, schemes: tuple[str, ...], buckets: tuple[str, ...]) -> str | None:
    try:
        check_allowed(parse_uri(uri), schemes, buckets)
    except RowError as err:
        return err.code.value
    return None


def test_allowlists() -> None:
    both = ("s3", "file")
    assert code_of_check("s3://images/x.png", both, ()) is None  # any bucket
    assert code_of_check("s3://images/x.png", both, ("images", "thumbs")) is None
    assert code_of_check("s3://private/x.png", both, ("images",)) == "uri_not_allowed"
    assert code_of_check("s3://images/x.png", ("file",), ()) == "uri_not_allowed"
    assert code_of_check("file:///x.png", ("s3",), ()) == "uri_not_allowed"
    # A bucket allowlist says nothing about local files.
    assert code_of_check("file:///x.png", both, ("images",)) is None


def test_bucket_allowlist_is_exact_not_prefix() -> None:
    assert code_of_check("s3://images-private/x.png", ("s3",), ("images",)) == "uri_not_allowed"


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("s3://lake/base/", "s3://lake/base"),
        ("s3a://lake/base", "s3://lake/base"),
        ("s3n://lake/base//", "s3://lake/base"),
        ("S3A://lake/base", "s3://lake/base"),
        ("file:///data/base/", "file:///data/base"),
        ("file://localhost/data/base", "file:///data/base"),
        ("file:///data/a%20b", "file:///data/a b"),
        ("/data/base/", "file:///data/base"),
        ("hdfs://nn/data/base/", "hdfs://nn/data/base"),
    ],
)
def test_normalize_location(location: str, expected: str) -> None:
    assert normalize_location(location) == expected


def test_relative_paths_become_absolute_file_uris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalize_location("out/lib") == "file://" + os.path.join(str(tmp_path), "out/lib")
    assert spark_location("out/lib") == "file://" + os.path.join(str(tmp_path), "out/lib")


def test_spark_location() -> None:
    assert spark_location("s3://lake/base/") == "s3a://lake/base"
    assert spark_location("s3a://lake/base") == "s3a://lake/base"
    assert spark_location("s3://lake/base", s3_scheme="s3") == "s3://lake/base"
    assert spark_location("/data/base") == "file:///data/base"


@pytest.mark.parametrize(
    ("child", "parent", "expected"),
    [
        ("/a/base", "/a/base", True),
        ("/a/base/", "file:///a/base", True),
        ("/a/base/out", "/a/base", True),
        ("/a/base2", "/a/base", False),
        ("/a/base", "/a/base2", False),
        ("/a", "/a/base", False),
        ("/a/base/../other", "/a/base", False),
        ("s3://lake/base/out", "s3a://lake/base/", True),
        ("s3://lake/base-2", "s3://lake/base", False),
        ("s3://lake/base", "/lake/base", False),
        ("s3://lake2/base", "s3://lake/base", False),
    ],
)
def test_is_same_or_inside(child: str, parent: str, expected: bool) -> None:
    assert is_same_or_inside(child, parent) is expected
