"""The taxonomy file, label maps checked against it, and the shipped maps on the real taxonomy."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from prodclf import fashion_mnist
from prodclf.errors import ConfigError
from prodclf.model.bundle import Label
from prodclf.taxonomy import (
    Category,
    Taxonomy,
    labels_for,
    load_mapping,
    load_taxonomy,
    parse_google_taxonomy,
)

pytestmark = pytest.mark.spark4

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_TAXONOMY = SHARED / "taxonomy" / "google-product-taxonomy-with-ids.en-US.txt"
GROCERY_CLASSES = SHARED / "data" / "grocery-store" / "dataset" / "classes.csv"

SMALL = """\
# Google_Product_Taxonomy_Version: 2021-09-21
412 - Food, Beverages & Tobacco
413 - Food, Beverages & Tobacco > Beverages
2887 - Food, Beverages & Tobacco > Beverages > Juice

422 - Food, Beverages & Tobacco > Food Items
430 - Food, Beverages & Tobacco > Food Items > Fruits & Vegetables
166 - Apparel & Accessories
187 - Apparel & Accessories > Shoes
"""
FRUIT_PATH = "Food, Beverages & Tobacco > Food Items > Fruits & Vegetables"


@pytest.fixture
def small() -> Taxonomy:
    return parse_google_taxonomy(SMALL, "small.txt")


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return str(tmp_path / name)


# --- the taxonomy file ---------------------------------------------------------------


def test_parse_reads_ids_paths_and_version(small: Taxonomy) -> None:
    assert len(small) == 7 and small.version == "2021-09-21" and small.source == "small.txt"
    juice = small["2887"]
    assert juice == Category("2887", ("Food, Beverages & Tobacco", "Beverages", "Juice"))
    assert juice.name == "Juice"
    assert juice.path_text == "Food, Beverages & Tobacco > Beverages > Juice"
    assert small.by_path(FRUIT_PATH) == small["430"]
    assert small.by_path("Apparel & Accessories>Shoes") == small["187"]  # spacing is free
    assert small.resolve(" 187 ") == small.resolve("Apparel & Accessories > Shoes")
    assert small.resolve("999") is None and small.resolve("Apparel > Shoes") is None
    assert "412" in small and "999" not in small


def test_parse_accepts_a_bom_crlf_and_children_before_parents() -> None:
    text = "\ufeff187 - Apparel & Accessories > Shoes\r\n166 - Apparel & Accessories\r\n"
    tax = parse_google_taxonomy(text, "t")
    assert tax["187"].path == ("Apparel & Accessories", "Shoes") and tax.version == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 - A\nA > B\n", "line 2 is not 'ID - Top > Sub > ...' (found 'A > B')"),
        ("1 - A\nx1 - A > B\n", "line 2 is not"),
        ("1 - A\n2 -  \n", "line 2 is not"),
        ("1 - A\n\n2 - A >  > B\n", "line 3 is not"),
        ("1 - A\n2 - A >\n", "line 2 is not"),
        ("1 - A\n2 - A > B\n2 - A > C\n", "line 3 repeats id 2 (first on line 2)"),
        ("1 - A\n2 - A > B\n3 - A > B\n", "line 3 repeats category 'A > B' (first on line 2)"),
        ("1 - A\n2 - A > B > C\n", "line 2 (2) has no parent category 'A > B'"),
        ("# only a comment\n\n", "holds no categories"),
    ],
)
def test_parse_refuses_bad_files_naming_source_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_google_taxonomy(text, "tax.txt")
    assert str(info.value).startswith("taxonomy tax.txt: ")
    assert message in str(info.value)


def test_load_taxonomy_reads_paths_and_file_uris(tmp_path: Path) -> None:
    path = write(tmp_path, "tax.txt", SMALL)
    assert load_taxonomy(path)["187"].name == "Shoes"
    assert len(load_taxonomy(f"file://{path}")) == 7


def test_load_taxonomy_refuses_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"taxonomy .*nope.txt: cannot be read"):
        load_taxonomy(str(tmp_path / "nope.txt"))
    (tmp_path / "latin1.txt").write_bytes("1 - Caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_taxonomy(str(tmp_path / "latin1.txt"))


# --- label maps ----------------------------------------------------------------------


def test_mapping_without_a_taxonomy_keeps_ids_as_given(tmp_path: Path) -> None:
    yaml_map = write(tmp_path, "a.yaml", "T-shirt/top: 212\nBag: '3032'\n7: x-1\n")
    json_map = write(tmp_path, "b.json", '{"T-shirt/top": "212", "Bag": 3032, "7": "x-1"}')
    expected = {"T-shirt/top": Category("212"), "Bag": Category("3032"), "7": Category("x-1")}
    assert load_mapping(yaml_map) == expected
    assert load_mapping(json_map, None) == expected
    assert load_mapping(yaml_map)["Bag"].path_text == ""


def test_mapping_without_a_taxonomy_refuses_path_values(tmp_path: Path) -> None:
    loc = write(tmp_path, "m.yaml", f"fruit: {FRUIT_PATH}\nshoe: 187\n")
    with pytest.raises(ConfigError, match=r"label\(s\) 'fruit' name a taxonomy path"):
        load_mapping(loc)


def test_mapping_with_a_taxonomy_resolves_ids_and_path_text(
    tmp_path: Path, small: Taxonomy
) -> None:
    loc = write(tmp_path, "m.yaml", f"juice: 2887\nfruit: '{FRUIT_PATH}'\nshoe: '187'\n")
    got = load_mapping(loc, small)
    assert got == {"juice": small["2887"], "fruit": small["430"], "shoe": small["187"]}
    assert got["fruit"].id == "430"


def test_unknown_ids_are_one_error_naming_all_of_them(tmp_path: Path, small: Taxonomy) -> None:
    loc = write(
        tmp_path,
        "x.yaml",
        "foo: 99999\nshoe: 187\nbar: 12345\nbaz: 99999\nqux: Apparel & Accessories > Hats\n",
    )
    with pytest.raises(ConfigError) as info:
        load_mapping(loc, small)
    assert str(info.value) == (
        f"label map {loc}: unknown taxonomy id(s) 99999 (labels 'foo', 'baz'), "
        "12345 (label 'bar'), 'Apparel & Accessories > Hats' (label 'qux') "
        "(taxonomy small.txt)"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot be read"),
        ("red: [1001\n", "not valid YAML/JSON"),
        ("- red\n- blue\n", "non-empty mapping"),
        ("{}", "non-empty mapping"),
        ("", "non-empty mapping"),
        ("red: {id: 1}\n", "bad entries: 'red'"),
        ("red: [1, 2]\n", "bad entries: 'red'"),
        ("red: true\n", "bad entries: 'red'"),
        ("red: ''\n", "bad entries: 'red'"),
        ("red:\n", "bad entries: 'red'"),
        ("yes: 1\nno: 2\n", "bad entries: True, False"),
        ("red: 1.5\n", "bad entries: 'red'"),
    ],
)
def test_mapping_refuses_bad_structure(
    tmp_path: Path, small: Taxonomy, content: str | None, message: str
) -> None:
    loc = str(tmp_path / "labels.yaml")
    if content is not None:
        write(tmp_path, "labels.yaml", content)
    for taxonomy in (None, small):
        with pytest.raises(ConfigError, match=message) as info:
            load_mapping(loc, taxonomy, what="--label-map")
        assert str(info.value).startswith(f"--label-map {loc}: ")


def test_labels_for_fills_ids_and_paths_in_output_order(small: Taxonomy) -> None:
    mapping = {"juice": small["2887"], "shoe": small["187"], "plain": Category("x-1")}
    assert labels_for(["shoe", "juice", "plain"], mapping, "-") == (
        Label("shoe", "187", "Apparel & Accessories > Shoes"),
        Label("juice", "2887", "Food, Beverages & Tobacco > Beverages > Juice"),
        Label("plain", "x-1", ""),
    )
    assert labels_for(["a", "b"], None, "-") == (Label("a", "a"), Label("b", "b"))


def test_labels_for_names_every_label_missing_from_the_map(small: Taxonomy) -> None:
    with pytest.raises(ConfigError) as info:
        labels_for(["blue", "shoe", "red"], {"shoe": small["187"]}, "--label-map m.yaml")
    assert str(info.value) == "--label-map m.yaml: no id for label(s) 'blue', 'red'"


# --- the real taxonomy and the shipped maps (real data: a missing file fails) ----------


@pytest.fixture(scope="module")
def google() -> Taxonomy:
    return load_taxonomy(str(REAL_TAXONOMY))


def test_the_real_google_taxonomy_parses(google: Taxonomy) -> None:
    assert len(google) == 5595 and google.version == "2021-09-21"
    assert sum(1 for c in google.values() if len(c.path) == 1) == 21
    assert max(len(c.path) for c in google.values()) == 7
    assert google["187"].path_text == "Apparel & Accessories > Shoes"


def test_grocery_map_covers_every_coarse_class_with_a_real_id(google: Taxonomy) -> None:
    with GROCERY_CLASSES.open(newline="") as f:
        coarse = {row["Coarse Class Name (str)"] for row in csv.DictReader(f)}
    assert len(coarse) == 43
    mapping = load_mapping(str(REPO / "infra/config/grocery-taxonomy.yaml"), google)
    assert set(mapping) == coarse
    assert all(c.path[0] == "Food, Beverages & Tobacco" for c in mapping.values())
    assert mapping["Apple"].name == "Apples"
    assert mapping["Oat-Milk"].path_text == "Food, Beverages & Tobacco > Beverages > Non-Dairy Milk"
    assert mapping["Satsumas"].name == "Citrus Fruits"  # no node of its own: the parent


def test_fashion_mnist_map_matches_the_demo_ids_and_the_real_taxonomy(google: Taxonomy) -> None:
    mapping = load_mapping(str(REPO / "infra/config/fashion-mnist-taxonomy.yaml"), google)
    assert list(mapping) == list(fashion_mnist.CLASS_NAMES)
    assert {k: c.id for k, c in mapping.items()} == fashion_mnist.TAXONOMY_IDS
    assert mapping["Coat"].path_text == (
        "Apparel & Accessories > Clothing > Outerwear > Coats & Jackets"
    )
    assert all(c.path[0] == "Apparel & Accessories" for c in mapping.values())
