"""The run report in a real browser: headless Chromium renders the page of a real run.

Two full runs of the tag job on a tiny catalog (real photos, a missing one, a text file
posing as a photo, a hostile product id); the second run's report is screenshotted as it
is (its Content-Security-Policy intact: the inline images must still show) and, with a
probe script added to a copy, its DOM is dumped: the errors table's rows, the review
thumbnails decoded by the browser (naturalWidth > 0) and the placeholders.

Chromium is Debian's ``chromium`` (``make chromium``): missing, the test fails under CI
and is skipped elsewhere.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from conftest import COLORS, jpeg_bytes, png_bytes, run_tag_job
from PIL import Image
from pyspark.sql import SparkSession

from prodclf.config import TagConfig

pytestmark = pytest.mark.slow

HOSTILE = "<b>bold</b>&\"'"

#: Added to a copy of the page: after load, the facts the test checks, as JSON in a <pre>.
PROBE = """<script>
window.addEventListener('load', () => {
  const thumbs = [...document.querySelectorAll('.cards img.thumb')];
  const facts = {
    errorRows: [...document.querySelectorAll('table.errors tbody tr')].map(
      tr => [...tr.cells].map(td => td.textContent)),
    thumbs: thumbs.length,
    decoded: thumbs.filter(i => i.complete && i.naturalWidth > 0).length,
    placeholders: [...document.querySelectorAll('.noimg')].map(d => d.textContent),
    ids: [...document.querySelectorAll('.cards .pid')].map(d => d.textContent),
    bold: [...document.querySelectorAll('b')].filter(b => b.textContent === 'bold').length,
    scripts: document.scripts.length,
  };
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(facts);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is missing: `make chromium` installs it")
    pytest.skip("chromium is not installed (make chromium)")


def browse(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1200,3000",
        "--virtual-time-budget=10000",
    ]
    return subprocess.run(
        [chromium(), *flags, *args, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )


def write_base(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.mkdir(parents=True)
    frame = pd.DataFrame(rows, columns=["product_id", "image_uri"])
    frame.to_parquet(path / "part-0.parquet", index=False)
    return path


@pytest.fixture(scope="module")
def run_page(
    spark: SparkSession, color_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The report of the second of two full runs (``leaves`` is not in the second)."""
    root = tmp_path_factory.mktemp("browser")
    images = root / "images"
    images.mkdir()
    (images / "red.png").write_bytes(png_bytes(COLORS["red"], (200, 120)))
    (images / "blue.jpg").write_bytes(jpeg_bytes(COLORS["blue"], (120, 200)))
    # Nearly as blue as red: a low-confidence tag (about 0.6).
    (images / "dull.png").write_bytes(png_bytes((125, 60, 120), (160, 160)))
    (images / "text.png").write_text("<html>this is not a photo</html>")
    rows = [
        ("red", f"file://{images / 'red.png'}"),
        ("blue", f"file://{images / 'blue.jpg'}"),
        ("dull", f"file://{images / 'dull.png'}"),
        (HOSTILE, f"file://{images / 'missing<i>.png'}"),
        ("gone2", f"file://{images / 'gone2.png'}"),
        ("text", f"file://{images / 'text.png'}"),
    ]
    cfg = TagConfig(
        base_library=str(write_base(root / "base1", [*rows, ("leaves", rows[0][1])])),
        commodity_library=str(root / "commodity"),
        model=str(color_bundle),
        run_date=date(2026, 11, 20),
        run_id="b1",
    )
    run_tag_job(cfg, spark)
    second = replace(cfg, base_library=str(write_base(root / "base2", rows)), run_id="b2")
    run_tag_job(second, spark)
    return root / "commodity" / "_runs" / "b2.html"


def test_the_report_renders_in_chromium(run_page: Path, tmp_path: Path) -> None:
    page = run_page.read_text()
    assert "<td>went inactive</td><td>1 (no longer in the base library)</td>" in page

    shot = tmp_path / "report.png"
    browse(run_page, tmp_path, f"--screenshot={shot}")
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 3000)
    pixels = list(img.getdata())
    near = [
        sum(1 for p in pixels if all(abs(a - b) < 40 for a, b in zip(p, c, strict=True)))
        for c in (COLORS["red"], COLORS["blue"])
    ]
    # The thumbnails' red and blue (the charts use other colours): each about 128 x 77 px.
    assert min(near) > 5000, near
    shutil.copy(shot, run_page.with_suffix(".png"))  # beside the page, to look at

    probed = tmp_path / "probed.html"
    csp = re.compile(r"<meta http-equiv='Content-Security-Policy'[^>]*>")
    assert csp.search(page)
    probed.write_text(csp.sub("", page).replace("</body>", PROBE + "</body>"))
    dom = browse(probed, tmp_path, "--dump-dom").stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    facts = json.loads(html.unescape(found.group(1)))
    codes = {row[0]: row for row in facts["errorRows"]}
    assert sorted(codes) == ["not_found", "undecodable_image"]
    assert codes["not_found"][1] == "2"
    assert f"{HOSTILE}: no such object: file://" in codes["not_found"][3]
    assert "gone2: no such object" in codes["not_found"][3]
    assert codes["undecodable_image"][1] == "1"
    assert (facts["thumbs"], facts["decoded"]) == (3, 3)  # red, blue, dull
    ids = facts["ids"]  # ok lowest confidence first (red and blue tie), then errors by turn
    assert (ids[0], sorted(ids[1:3]), ids[3:]) == (
        "dull",
        ["blue", "red"],
        [HOSTILE, "text", "gone2"],
    )
    # Each photo of an error row is missing for the run's own reason, still.
    assert facts["placeholders"] == [
        "no photo: still not_found",
        "no photo: still undecodable_image",
        "no photo: still not_found",
    ]
    assert (facts["bold"], facts["scripts"]) == (0, 1)  # the ids' markup is text; the probe
