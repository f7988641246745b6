"""The run report's operator pieces, on real DataFrames: errors by code with examples,
products a full run set inactive, the selection in words, churn with nothing to show, the
review sample's bounds and its thumbnails, whole-number count axes, escaping."""

from __future__ import annotations

import base64
import io
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from conftest import COLORS, png_bytes
from PIL import Image
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from prodclf.config import StorageConfig, TagConfig
from prodclf.library.manifest import RunManifest
from prodclf.schemas import COMMODITY_LIBRARY, CURRENT_TAGS, STATUS_ERROR, STATUS_OK
from prodclf.tagging import plots, review
from prodclf.tagging.report import (
    ErrorCodeRows,
    ReportData,
    churn_html,
    collect_report_data,
    describe_selection,
    error_codes,
    error_rows_by_code,
    errors_table,
    inactivated_by,
    render_html,
)
from prodclf.tagging.review import (
    REVIEW_COLUMNS,
    ReviewItem,
    add_thumbnails,
    render_review,
    review_items,
    review_rows,
    thumbnail,
)

pytestmark = pytest.mark.spark4

DAY = date(2026, 11, 20)
HOSTILE = "<script>alert('x')</script>&"
EXAMPLES = "error_code string, products bigint, "
EXAMPLES += "examples array<struct<product_id:string,error_message:string>>"


def history(spark: SparkSession, rows: list[dict[str, Any]], run_id: str = "r1") -> DataFrame:
    """A run's tags_history rows (schema COMMODITY_LIBRARY), unnamed columns null."""
    names = COMMODITY_LIBRARY.fieldNames()
    base = {n: None for n in names} | {"run_id": run_id, "run_date": DAY, "reason": "full"}
    return spark.createDataFrame(
        [tuple({**base, **r}[n] for n in names) for r in rows], COMMODITY_LIBRARY
    )


def ok(pid: str, category: str, confidence: float, uri: str | None = None) -> dict[str, Any]:
    other = "blue" if category == "red" else "red"
    top = [(category, confidence), (other, round(1 - confidence, 4))]
    return {
        "product_id": pid,
        "status": STATUS_OK,
        "category": category,
        "confidence": confidence,
        "top_k": top,
        "image_uri": uri,
    }


def err(pid: str, code: str, message: str, uri: str | None = None) -> dict[str, Any]:
    return {
        "product_id": pid,
        "status": STATUS_ERROR,
        "error_code": code,
        "error_message": message,
        "image_uri": uri,
    }


def current(spark: SparkSession, rows: list[tuple[str, bool, str]]) -> DataFrame:
    """tags_current rows (product_id, active, updated_run_id), other columns null."""
    names = CURRENT_TAGS.fieldNames()
    full = []
    for pid, active, updated in rows:
        values = {n: None for n in names} | {
            "product_id": pid,
            "active": active,
            "updated_run_id": updated,
        }
        full.append(tuple(values[n] for n in names))
    return spark.createDataFrame(full, CURRENT_TAGS)


def manifest(mode: str = "full", **kw: Any) -> RunManifest:
    return RunManifest(run_id="r1", run_date=DAY, mode=mode, selection={"mode": mode}, **kw)


# --- errors by code ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed(spark: SparkSession) -> DataFrame:
    return history(
        spark,
        [
            ok("a", "red", 0.9),
            ok("b", "blue", 0.8),
            *[err(f"n{i}", "not_found", f"no such object: file:///img/n{i}.png") for i in (4, 1)],
            err("n3", "not_found", "no such object: file:///img/n3.png"),
            err("n2", "not_found", "no such object: file:///img/n2.png"),
            err(HOSTILE, "undecodable_image", f"not an image: {HOSTILE}"),
        ],
    )


def test_error_rows_by_code_counts_and_lowest_ids_as_examples(
    spark: SparkSession, mixed: DataFrame
) -> None:
    expected = spark.createDataFrame(
        [
            (
                "not_found",
                4,
                [
                    ("n1", "no such object: file:///img/n1.png"),
                    ("n2", "no such object: file:///img/n2.png"),
                ],
            ),
            ("undecodable_image", 1, [(HOSTILE, f"not an image: {HOSTILE}")]),
        ],
        EXAMPLES,
    )
    assertDataFrameEqual(error_rows_by_code(mixed, examples=2), expected, checkRowOrder=True)
    assert error_codes(error_rows_by_code(mixed))[0] == ErrorCodeRows(
        "not_found",
        4,
        [(f"n{i}", f"no such object: file:///img/n{i}.png") for i in (1, 2, 3)],
    )


def test_errors_table_has_a_row_per_code_with_examples_escaped(mixed: DataFrame) -> None:
    page = errors_table(error_codes(error_rows_by_code(mixed)))
    rows = re.findall(r"<tr>(.*?)</tr>", page.split("<tbody>")[1])
    assert len(rows) == 2
    assert "<code>not_found</code></td><td>4</td>" in rows[0]
    assert "no object at that URI" in rows[0]  # what the code means
    assert rows[0].count("<li>") == 3
    assert "<code>n1</code>: no such object: file:///img/n1.png</li>" in rows[0]
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;" in rows[1]
    assert errors_table([]) == "<p>No error rows: every product of this run was tagged.</p>"


def test_long_example_messages_are_cut() -> None:
    page = errors_table([ErrorCodeRows("fetch_failed", 1, [("p", "x" * 1000)])])
    assert "x" * 199 + "\u2026" in page and "x" * 200 not in page


def test_the_page_escapes_everything_and_loads_nothing(spark: SparkSession) -> None:
    rows = history(spark, [ok(HOSTILE, HOSTILE, 0.3), err("e", HOSTILE, HOSTILE)])
    m = manifest("full", errors={HOSTILE: 1}, reasons={HOSTILE: 2}, model_name=HOSTILE)
    data = collect_report_data(rows, None, m, 0.6)
    add_thumbnails(data.review, StorageConfig())
    page = render_html(data)
    assert "<script" not in page
    assert "http://" not in page and "https://" not in page
    assert "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none';" in page
    assert page.count("&lt;script&gt;") >= 6  # summary, reasons, errors, review cards


# --- inactive products ------------------------------------------------------------------------


def test_inactivated_by_is_the_rows_the_run_set_inactive(spark: SparkSession) -> None:
    snapshot = current(
        spark,
        [
            ("left", False, "r1"),  # this run did not find it: inactive now
            ("left2", False, "r1"),
            ("tagged", True, "r1"),  # this run tagged it
            ("earlier", False, "r0"),  # inactive since an earlier run, unchanged
            ("kept", True, "r0"),
        ],
    )
    expected = spark.createDataFrame([("left",), ("left2",)], "product_id string")
    assertDataFrameEqual(inactivated_by(snapshot, "r1").select("product_id"), expected)
    rows = history(spark, [ok("tagged", "red", 0.9)])
    assert collect_report_data(rows, None, manifest("full"), 0.6, snapshot).inactivated == 2
    data = collect_report_data(rows, None, manifest("incremental"), 0.6, snapshot)
    assert data.inactivated is None


def test_the_summary_says_how_many_went_inactive(spark: SparkSession) -> None:
    rows = history(spark, [ok("tagged", "red", 0.9)])
    data = collect_report_data(rows, None, manifest("full"), 0.6)
    data.inactivated = 2
    assert "<td>went inactive</td><td>2 (no longer in the base library)</td>" in render_html(data)
    data.inactivated = None
    assert "unknown (the run&#x27;s tags_current snapshot" in render_html(data)
    data = collect_report_data(rows, None, manifest("backfill"), 0.6)
    assert "<td>none (only full runs mark products inactive)</td>" in render_html(data)


# --- the selection in words -------------------------------------------------------------------


def tag_config(**kw: Any) -> TagConfig:
    return TagConfig(base_library="/b", commodity_library="/c", model="/m", run_date=DAY, **kw)


@pytest.mark.parametrize(
    ("config", "text"),
    [
        (
            {},
            "full run: every product of the base library; products no longer in it are "
            "marked inactive",
        ),
        (
            {
                "mode": "incremental",
                "change_column": "image_updated_at",
                "retry_codes": ("fetch_failed", "store_unavailable"),
            },
            "incremental run: products new or back in the base library, whose image_uri or "
            "image_updated_at changed, or without a tag from this model version; errors "
            "retried: fetch_failed, store_unavailable",
        ),
        (
            {"mode": "incremental", "retry_codes": ()},
            "incremental run: products new or back in the base library, whose image_uri "
            "changed, or without a tag from this model version; no error code retried",
        ),
        (
            {
                "mode": "backfill",
                "products": "s3://lists/ids.txt",
                "where": "merchant = 'm1'",
                "retry_errors": True,
            },
            "backfill: the products of the base library listed in s3://lists/ids.txt and "
            "matching merchant = 'm1' and whose current tag is an error",
        ),
        (
            {"mode": "backfill", "retry_errors": True},
            "backfill: the products of the base library whose current tag is an error",
        ),
    ],
    ids=["full", "incremental", "incremental-bare", "backfill", "backfill-retry"],
)
def test_the_selection_in_words(config: dict[str, Any], text: str) -> None:
    assert describe_selection(tag_config(**config).selection) == text


def test_a_selection_from_an_older_or_unknown_writer() -> None:
    assert describe_selection({}, "full").startswith("full run: every product")
    assert describe_selection({"mode": "sample", "n": 5}) == "sample run (n=5)"
    assert describe_selection({}) == "unknown run"


def test_the_page_shows_the_selection_in_words_not_a_dict(spark: SparkSession) -> None:
    rows = history(spark, [ok("a", "red", 0.9)])
    selection = tag_config(mode="backfill", where="merchant = 'm1'").selection
    m = manifest("backfill").with_(selection=selection)
    page = render_html(collect_report_data(rows, None, m, 0.6))
    assert "<td>backfill: the products of the base library matching merchant = " in page
    assert "{&#x27;mode&#x27;" not in page and "{'mode'" not in page


# --- churn ------------------------------------------------------------------------------------


def test_churn_with_no_change_is_a_sentence_not_an_empty_table(spark: SparkSession) -> None:
    rows = history(spark, [ok("a", "red", 0.9), ok("b", "blue", 0.8)])
    before = history(spark, [ok("a", "red", 0.7), ok("b", "blue", 0.6)]).drop("run_date")
    data = collect_report_data(rows, before, manifest(), 0.6)
    assert (data.compared, data.changed, data.transitions) == (2, 0, [])
    text = churn_html(data)
    assert "<table" not in text
    assert text == (
        "<p>0 of 2 products that had an ok tag changed category (0.00%).</p>"
        "<p>No product changed category: there is no transition to show.</p>"
    )
    moved = ReportData(manifest(), 0.6, compared=2, changed=1, transitions=[("red", "blue", 1)])
    assert "<td>red</td><td>blue</td><td>1</td>" in churn_html(moved)


# --- the review sample ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many(spark: SparkSession) -> DataFrame:
    """30 ok rows (confidence 0.50 .. 0.79) and 30 error rows: 25 + 3 + 2 over three codes."""
    rows = [ok(f"ok{i:02d}", "red", 0.5 + i / 100) for i in range(30)]
    rows += [err(f"nf{i:02d}", "not_found", f"gone {i}") for i in range(25)]
    rows += [err(f"ud{i}", "undecodable_image", f"bad {i}") for i in range(3)]
    rows += [err(f"ff{i}", "fetch_failed", f"slow {i}") for i in range(2)]
    return history(spark, rows)


def test_review_rows_lowest_confidence_then_errors_taking_turns(
    spark: SparkSession, many: DataFrame
) -> None:
    got = review_rows(many, ok_limit=3, error_limit=5)
    keys = [(r.product_id, r.status, r.error_code) for r in got.collect()]
    assert keys == [
        ("ok00", STATUS_OK, None),
        ("ok01", STATUS_OK, None),
        ("ok02", STATUS_OK, None),
        ("ff0", STATUS_ERROR, "fetch_failed"),
        ("nf00", STATUS_ERROR, "not_found"),
        ("ud0", STATUS_ERROR, "undecodable_image"),
        ("ff1", STATUS_ERROR, "fetch_failed"),
        ("nf01", STATUS_ERROR, "not_found"),
    ]
    expected = many.where("product_id in ('ok00', 'ok01', 'ok02', 'ff0', 'nf00', 'ud0', 'ff1')")
    expected = expected.unionByName(many.where("product_id = 'nf01'")).select(*REVIEW_COLUMNS)
    assertDataFrameEqual(got, expected)


def test_the_review_sample_is_bounded(spark: SparkSession, many: DataFrame) -> None:
    items = review_items(review_rows(many))
    oks = [it for it in items if it.status == STATUS_OK]
    errors = [it for it in items if it.status != STATUS_OK]
    assert (len(oks), len(errors)) == (review.REVIEW_OK, review.REVIEW_ERRORS) == (24, 24)
    assert [it.product_id for it in oks] == [f"ok{i:02d}" for i in range(24)]
    assert {it.error_code for it in errors} == {"not_found", "undecodable_image", "fetch_failed"}
    assert sum(it.error_code == "not_found" for it in errors) == 19  # 24 - 3 - 2
    assert oks[0].top_k == [("red", pytest.approx(0.5)), ("blue", pytest.approx(0.5))]
    few = history(spark, [ok("a", "red", 0.9), err("e", "not_found", "gone")])
    assert [it.product_id for it in review_items(review_rows(few))] == ["a", "e"]
    data = collect_report_data(many, None, manifest(), 0.6)
    assert (data.ok_rows, data.error_rows, len(data.review)) == (30, 30, 48)


# --- thumbnails -------------------------------------------------------------------------------


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_thumbnails_are_small_jpegs_or_say_why_not(tmp_path: Path) -> None:
    wide = tmp_path / "wide.png"
    wide.write_bytes(png_bytes(COLORS["red"], (300, 150)))
    small = tmp_path / "small.png"
    small.write_bytes(png_bytes(COLORS["blue"], (40, 20)))
    (tmp_path / "text.png").write_text("<html>not an image</html>")
    storage = StorageConfig()
    jpeg, problem = thumbnail(f"file://{wide}", storage)
    assert problem is None and jpeg is not None
    img = decoded(jpeg)
    assert (img.format, img.size) == ("JPEG", (128, 64))
    r, g, b = img.convert("RGB").getpixel((64, 32))
    assert r > 180 and g < 60 and b < 60
    assert decoded(thumbnail(f"file://{small}", storage)[0] or "").size == (40, 20)  # not enlarged
    assert thumbnail(f"file://{tmp_path}/gone.png", storage) == (
        None,
        f"not_found: no such object: file://{tmp_path}/gone.png",
    )
    none, why = thumbnail(f"file://{tmp_path}/text.png", storage)
    assert none is None and why == "undecodable_image: not an image format Pillow reads"
    refused = thumbnail(f"file://{wide}", StorageConfig(allowed_schemes=("s3",)))
    assert refused == (None, "uri_not_allowed: scheme 'file' is not in the allowlist")
    assert thumbnail(None, storage) == (None, "invalid_uri: image_uri is null or empty")


def test_a_rotated_phone_photo_keeps_its_aspect(tmp_path: Path) -> None:
    img = Image.new("RGB", (200, 100), COLORS["red"])
    exif = img.getexif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    path = tmp_path / "phone.jpg"
    img.save(path, format="JPEG", exif=exif)
    assert decoded(thumbnail(f"file://{path}", StorageConfig())[0] or "").size == (64, 128)


def test_review_cards_show_thumbnails_placeholders_and_escaped_text(tmp_path: Path) -> None:
    photo = tmp_path / "p.png"
    photo.write_bytes(png_bytes(COLORS["red"], (64, 64)))
    gone = f"file://{tmp_path}/<b>.png"
    items = [
        ReviewItem(HOSTILE, f"file://{photo}", STATUS_OK, HOSTILE, 0.42, [(HOSTILE, 0.42)]),
        # The model failed on it: its photo is fetched again (and is gone by now).
        ReviewItem("e1", gone, STATUS_ERROR, error_code="inference_failed", error_message=HOSTILE),
        ReviewItem("e2", gone, STATUS_ERROR, error_code="not_found", error_message="gone"),
    ]
    add_thumbnails(items, StorageConfig())
    page = render_review(items, 0.6, ok_rows=1, error_rows=2)
    assert page.count("<img class='thumb'") == 1 and page.count("class='noimg'") == 2
    assert "class='card doubt'" in page and page.count("class='card err'") == 2
    # A reason other than the run's error is news: it is shown. A photo the run could not
    # fetch or decode is not fetched again: "still" its error.
    assert f"no photo: not_found: no such object: file://{tmp_path}/&lt;b&gt;.png" in page
    assert "<div class='noimg'>no photo: still not_found</div>" in page
    assert "<script" not in page and "<b>.png" not in page
    assert render_review([], 0.6, 0, 0) == "<p>The run wrote no rows to review.</p>"


# --- count axes -------------------------------------------------------------------------------


def test_count_axes_tick_whole_products_only(monkeypatch: pytest.MonkeyPatch) -> None:
    figures: list[Any] = []
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or "")
    plots.bar(["not_found"], [1], "error rows by code")
    plots.plot_confidence([0] * 19 + [1], 0.6)
    plots.plot_throughput([[0.5, 1.0]], 1, 1.0)
    axes = [figures[0].axes[0].xaxis, figures[1].axes[0].yaxis, figures[2].axes[0].yaxis]
    for axis in axes:
        lo, hi = axis.get_view_interval()
        ticks = [t for t in axis.get_major_locator().tick_values(lo, hi) if lo <= t <= hi]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
