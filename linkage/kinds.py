"""What each attribute kind means: how it is cleaned, compared and blocked on.

A kind is the one thing a user must say about an attribute. From it idweave derives the
cleaning (:func:`clean_expr`), the default comparison ladder (:func:`default_comparison`)
and the blocking keys the rule derivation may use (:data:`BLOCKING_KEYS`).

>>> import polars as pl
>>> pl.DataFrame({"n": ["  José O'Brien-Smith "]}).select(clean_expr("given_name", pl.col("n"))).item()
'jose obrien smith'
>>> pl.DataFrame({"n": ["219-09-9999", "000000000"]}).select(clean_expr("national_id", pl.col("n")))["n"].to_list()
['219099999', None]
"""

from __future__ import annotations

from typing import Any

import polars as pl

__all__ = [
    "KINDS",
    "NAME_KINDS",
    "clean_expr",
    "default_comparison",
    "check_comparison_override",
    "COMPARISON_METHODS",
]

KINDS = (
    "given_name", "family_name", "full_name", "date", "sex", "category", "postcode",
    "address", "city", "national_id", "phone", "email", "text", "number",
)
NAME_KINDS = ("given_name", "family_name", "full_name")

# Titles and suffixes that say nothing about who a person is.
NAME_NOISE = r"\b(mr|mrs|ms|miss|dr|prof|sir|dame|jr|sr|ii|iii|iv)\b"
# Identifier placeholders: all one repeated character, or an obvious counting run.
PLACEHOLDER_IDS = ("123456789", "1234567890", "012345678", "987654321")


# Letters that Unicode does not decompose into a base letter and an accent, so NFKD alone
# would drop them ("Søren" -> "s ren"); written the way ASCII registries spell them.
_FOLD = {"ø": "o", "Ø": "o", "æ": "ae", "Æ": "ae", "œ": "oe", "Œ": "oe", "ß": "ss", "ẞ": "ss",
         "ł": "l", "Ł": "l", "đ": "d", "Đ": "d", "ð": "d", "Ð": "d", "þ": "th", "Þ": "th", "ı": "i"}


def _basic_text(e: pl.Expr) -> pl.Expr:
    """Lower case, accents stripped, apostrophes dropped, other punctuation to spaces."""
    return (
        e.cast(pl.Utf8)
        .str.replace_many(list(_FOLD), list(_FOLD.values()))
        .str.normalize("NFKD")
        .str.replace_all(r"\p{M}", "")
        .str.to_lowercase()
        .str.replace_all(r"['`’.]", "")
        .str.replace_all(r"[^a-z0-9 ]+", " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def _null_if_empty(e: pl.Expr) -> pl.Expr:
    return pl.when(e.str.len_chars() > 0).then(e).otherwise(None)


def _name(e: pl.Expr) -> pl.Expr:
    t = _basic_text(e).str.replace_all(NAME_NOISE, " ")
    t = t.str.replace_all(r"[0-9]+", " ").str.replace_all(r"\s+", " ").str.strip_chars()
    return _null_if_empty(t)


def _full_name(e: pl.Expr) -> pl.Expr:
    # "FAMILY, Given" is the commonest registry convention for full names: reorder it so
    # that full names from every source read given-first.
    s = e.cast(pl.Utf8)
    reordered = (
        pl.when(s.str.contains(","))
        .then(pl.concat_str([s.str.split_exact(",", 1).struct.field("field_1"),
                             s.str.split_exact(",", 1).struct.field("field_0")], separator=" "))
        .otherwise(s)
    )
    return _name(reordered)


def _one_repeated_char(t: pl.Expr) -> pl.Expr:
    """True where a string is one character repeated ("000000000"); polars regexes have no
    backreferences, so count the distinct characters instead."""
    return (t.str.len_chars() > 0) & (t.str.split("").list.n_unique() == 1)


def _identifier(e: pl.Expr) -> pl.Expr:
    t = e.cast(pl.Utf8).str.to_uppercase().str.replace_all(r"[^0-9A-Z]", "")
    placeholder = _one_repeated_char(t) | t.is_in(list(PLACEHOLDER_IDS))
    # Fewer than 4 characters identify nobody; treat them as missing like placeholders.
    return pl.when((t.str.len_chars() >= 4) & ~placeholder).then(t).otherwise(None)


def _phone(e: pl.Expr) -> pl.Expr:
    d = e.cast(pl.Utf8).str.replace_all(r"[^0-9]", "")
    # Compare national significant numbers: drop a leading international or trunk prefix
    # so that "+44 7700 900123" and "07700 900123" agree.
    d = d.str.replace(r"^00", "").str.replace(r"^(44|1|33|49|91|61)(\d{9,10})$", "$2").str.replace(r"^0", "")
    bad = (d.str.len_chars() < 6) | _one_repeated_char(d)
    return pl.when(~bad).then(d).otherwise(None)


def _postcode(e: pl.Expr) -> pl.Expr:
    t = e.cast(pl.Utf8).str.to_uppercase().str.replace_all(r"[^0-9A-Z]", "")
    return _null_if_empty(t)


def _email(e: pl.Expr) -> pl.Expr:
    t = e.cast(pl.Utf8).str.strip_chars().str.to_lowercase()
    return pl.when(t.str.contains(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")).then(t).otherwise(None)


def _sex(e: pl.Expr) -> pl.Expr:
    t = e.cast(pl.Utf8).str.strip_chars().str.to_lowercase()
    return (
        pl.when(t.is_in(["m", "male", "man", "boy", "1", "h", "homme"])).then(pl.lit("m"))
        .when(t.is_in(["f", "female", "woman", "girl", "2", "w", "femme"])).then(pl.lit("f"))
        .otherwise(None)
    )


def _category(e: pl.Expr) -> pl.Expr:
    return _null_if_empty(_basic_text(e))


ADDRESS_ABBREV = {
    r"\bst\b": "street", r"\brd\b": "road", r"\bave?\b": "avenue", r"\bdr\b": "drive",
    r"\bln\b": "lane", r"\bct\b": "court", r"\bpl\b": "place", r"\bcres\b": "crescent",
    r"\bsq\b": "square", r"\bblvd\b": "boulevard", r"\bapt\b": "apartment", r"\bflt\b": "flat",
}


def _address(e: pl.Expr) -> pl.Expr:
    t = _basic_text(e)
    for pat, rep in ADDRESS_ABBREV.items():
        t = t.str.replace_all(pat, rep)
    return _null_if_empty(t)


def _number(e: pl.Expr) -> pl.Expr:
    return e.cast(pl.Utf8).str.replace_all(r"[,\s]", "").cast(pl.Float64, strict=False)


_CLEANERS = {
    "given_name": _name,
    "family_name": _name,
    "full_name": _full_name,
    "sex": _sex,
    "category": _category,
    "postcode": _postcode,
    "address": _address,
    "city": _category,
    "national_id": _identifier,
    "phone": _phone,
    "email": _email,
    "text": _category,
    "number": _number,
}


def clean_expr(kind: str, e: pl.Expr) -> pl.Expr:
    """The polars expression that cleans a column of this kind (dates excepted: they need
    a per-source format and are parsed in :mod:`idweave.linkage.sources`).

    Lookup's fast path mirrors these rules in plain Python (``linkage/_query_clean.py``): a
    change here must be made there too (``tests/test_lookup_fast.py`` fails until it is).

    >>> pl.DataFrame({"p": ["+44 7700 900123", "07700-900123"]}).select(clean_expr("phone", pl.col("p")))["p"].to_list()
    ['7700900123', '7700900123']
    """
    if kind == "date":
        raise ValueError("dates are parsed by idweave.linkage.sources.parse_dates")
    if kind not in _CLEANERS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    out = _CLEANERS[kind](e)
    try:  # keep the input's column name (a when/then chain would take another one)
        return out.alias(e.meta.output_name())
    except Exception:
        return out


# Comparison methods a user may name in `comparisons:`; each maps to a Splink ladder in
# idweave.linkage.comparisons.
COMPARISON_METHODS = (
    "name", "full_name", "date", "identifier", "postcode", "email", "phone", "address",
    "exact", "jaro_winkler", "levenshtein", "damerau_levenshtein", "numeric", "off",
)

_DEFAULT_COMPARISON = {
    "given_name": {"method": "name", "term_frequency": True},
    "family_name": {"method": "name", "term_frequency": True},
    "full_name": {"method": "full_name", "term_frequency": True},
    "date": {"method": "date"},
    "sex": {"method": "exact"},
    "category": {"method": "exact", "term_frequency": True},
    "postcode": {"method": "postcode", "term_frequency": True},
    "address": {"method": "address", "term_frequency": True},
    "city": {"method": "exact", "term_frequency": True},
    "national_id": {"method": "identifier"},
    "phone": {"method": "phone"},
    "email": {"method": "email"},
    "text": {"method": "jaro_winkler", "thresholds": [0.95, 0.85]},
    "number": {"method": "numeric", "thresholds": [0.01, 0.1]},
}


def default_comparison(kind: str) -> dict[str, Any]:
    """The comparison ladder a kind gets when the project names none.

    >>> default_comparison("date")
    {'method': 'date'}
    """
    return dict(_DEFAULT_COMPARISON[kind])


def check_comparison_override(spec: Any) -> str | None:
    """Return a message if a `comparisons:` entry is malformed, else None.

    >>> check_comparison_override({"method": "jaro_winkler", "thresholds": [0.9, 0.7]}) is None
    True
    >>> check_comparison_override({"method": "exact", "weight": 2})
    "unknown keys ['weight']; allowed: method, thresholds, term_frequency, household"
    >>> check_comparison_override({"method": "address", "household": "no"})
    'household must be true or false'
    """
    if spec is False or spec == "off":
        return None
    if isinstance(spec, str):
        spec = {"method": spec}
    if not isinstance(spec, dict):
        return "must be a method name, false, or a mapping with 'method'"
    method = spec.get("method")
    if method not in COMPARISON_METHODS:
        return f"unknown method {method!r}; expected one of {', '.join(COMPARISON_METHODS)}"
    th = spec.get("thresholds")
    if th is not None and (not isinstance(th, list) or not all(isinstance(x, (int, float)) for x in th)):
        return "thresholds must be a list of numbers"
    if "household" in spec and not isinstance(spec["household"], bool):
        return "household must be true or false"
    extra = set(spec) - {"method", "thresholds", "term_frequency", "household"}
    if extra:
        return f"unknown keys {sorted(extra)}; allowed: method, thresholds, term_frequency, household"
    return None
