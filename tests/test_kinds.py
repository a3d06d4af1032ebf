"""What each attribute kind means: cleaning (exact outputs), default comparisons, and the
check of a `comparisons:` override."""

from __future__ import annotations

import polars as pl
import pytest

from idweave.linkage.kinds import (
    COMPARISON_METHODS, KINDS, check_comparison_override, clean_expr, default_comparison,
)


def clean(kind: str, values: list) -> list:
    return pl.DataFrame({"v": values}, schema={"v": pl.Utf8}).select(clean_expr(kind, pl.col("v")))["v"].to_list()


def test_the_kinds_issue_2_asks_for() -> None:
    assert set(KINDS) >= {"given_name", "family_name", "full_name", "date", "sex", "category", "postcode", "address",
                          "city", "national_id", "phone", "email", "text", "number"}


def test_names_lower_case_without_accents() -> None:
    assert clean("given_name", ["JOSÉ", "Zoë", "Chloé", "François", "Ångström"]) == [
        "jose", "zoe", "chloe", "francois", "angstrom"]


def test_names_letters_unicode_does_not_decompose() -> None:
    # NFKD leaves these whole, so they need their own folding ("Søren" in one registry is
    # "Soren" in another).
    assert clean("given_name", ["Søren", "Łukasz", "Æsa", "Œdipe", "Straße", "Đorđe", "Þóra"]) == [
        "soren", "lukasz", "aesa", "oedipe", "strasse", "dorde", "thora"]


def test_names_whitespace_and_punctuation() -> None:
    assert clean("family_name", ["  van   der  Berg ", "Smith-Jones", "O'Brien", "O’Neil", "st. john", "Lee,"]) == [
        "van der berg", "smith jones", "obrien", "oneil", "st john", "lee"]


def test_names_titles_digits_and_empties() -> None:
    assert clean("given_name", ["Dr. John", "Mrs Ann", "john jr", "anne 2", "", "  ", "...", None]) == [
        "john", "ann", "john", "anne", None, None, None, None]


def test_full_names_family_first_with_a_comma_are_reordered() -> None:
    assert clean("full_name", ["SMITH, John A", "Garcia Lopez, José", "John Smith", "Mr John SMITH Jr", None]) == [
        "john a smith", "jose garcia lopez", "john smith", "john smith", None]


def test_identifiers_lose_separators() -> None:
    assert clean("national_id", ["219-09-9999", "219 09 9999", "219.09.9999", " 219099999 ", "ab-12 34"]) == [
        "219099999", "219099999", "219099999", "219099999", "AB1234"]


def test_identifier_placeholders_become_null() -> None:
    # All zeros, one repeated digit, counting runs, and values too short to identify anyone.
    assert clean("national_id", ["000000000", "000-00-0000", "999999999", "111 11 1111", "123456789",
                                 "987654321", "012345678", "123", "", None]) == [None] * 10


def test_phones_to_digits_without_international_or_trunk_prefix() -> None:
    assert clean("phone", ["+44 7700 900123", "07700-900123", "07700 900123", "07700900123", "0044 7700 900123",
                           "(555) 123-4567", "+1 555 123 4567"]) == [
        "7700900123", "7700900123", "7700900123", "7700900123", "7700900123", "5551234567", "5551234567"]


def test_phone_placeholders_and_fragments_become_null() -> None:
    assert clean("phone", ["000000000", "12345", "n/a", "", None]) == [None] * 5


def test_postcodes_upper_case_without_spaces_or_punctuation() -> None:
    assert clean("postcode", ["sw1a 2aa", "SW1A2AA", " m14  6fr ", "M14-6FR", "", None]) == [
        "SW1A2AA", "SW1A2AA", "M146FR", "M146FR", None, None]


def test_emails_lower_cased_and_checked() -> None:
    assert clean("email", [" John.Smith@Example.COM ", "x@y.org", "not an email", "a@b", "", None]) == [
        "john.smith@example.com", "x@y.org", None, None, None, None]


def test_sex() -> None:
    assert clean("sex", ["M", "Male", " m ", "F", "female", "Woman", "x", "", None]) == [
        "m", "m", "m", "f", "f", "f", None, None, None]


def test_addresses_expand_common_abbreviations() -> None:
    assert clean("address", ["12 High St.", "3 Park Rd", "5 Elm Ave", "Flat 2, 10 Downing St", ""]) == [
        "12 high street", "3 park road", "5 elm avenue", "flat 2 10 downing street", None]


def test_city_category_and_text() -> None:
    assert clean("city", ["  New-York ", "SÃO PAULO"]) == ["new york", "sao paulo"]
    assert clean("category", ["Self-Employed", ""]) == ["self employed", None]
    assert clean("text", ["A  B. c"]) == ["a b c"]


def test_numbers() -> None:
    out = pl.DataFrame({"v": ["1,234", " 5 ", "x", None]}).select(clean_expr("number", pl.col("v")))["v"]
    assert out.dtype == pl.Float64
    assert out.to_list() == [1234.0, 5.0, None, None]


def test_the_cleaned_column_keeps_its_name() -> None:
    df = pl.DataFrame({"a": ["Smith, Ann"], "b": ["M"]})
    assert df.select(clean_expr("full_name", pl.col("a")), clean_expr("sex", pl.col("b"))).columns == ["a", "b"]


def test_dates_and_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="dates are parsed by idweave.linkage.sources.parse_dates"):
        clean_expr("date", pl.col("v"))
    with pytest.raises(ValueError, match="unknown kind 'birthday'"):
        clean_expr("birthday", pl.col("v"))


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_a_default_comparison(kind: str) -> None:
    spec = default_comparison(kind)
    assert spec["method"] in COMPARISON_METHODS
    assert check_comparison_override(spec) is None
    spec["method"] = "changed"
    assert default_comparison(kind)["method"] != "changed"  # a copy, not the table itself


def test_default_comparisons_of_the_main_kinds() -> None:
    assert default_comparison("given_name") == {"method": "name", "term_frequency": True}
    assert default_comparison("date") == {"method": "date"}
    assert default_comparison("national_id") == {"method": "identifier"}
    assert default_comparison("postcode") == {"method": "postcode", "term_frequency": True}


@pytest.mark.parametrize("spec, message", [
    ("exact", None),
    (False, None),
    ("off", None),
    ({"method": "levenshtein", "thresholds": [1, 2]}, None),
    ({"method": "name", "term_frequency": False}, None),
    ({"method": "soundex"}, "unknown method 'soundex'; expected one of " + ", ".join(COMPARISON_METHODS)),
    ({"thresholds": [1]}, "unknown method None; expected one of " + ", ".join(COMPARISON_METHODS)),
    ({"method": "jaro_winkler", "thresholds": 0.9}, "thresholds must be a list of numbers"),
    ({"method": "jaro_winkler", "thresholds": ["high"]}, "thresholds must be a list of numbers"),
    ({"method": "exact", "weight": 2}, "unknown keys ['weight']; allowed: method, thresholds, term_frequency, household"),
    (3, "must be a method name, false, or a mapping with 'method'"),
])
def test_comparison_overrides(spec, message) -> None:
    assert check_comparison_override(spec) == message
