"""Pseudonymised identifiers and the project keys of accountable identity.

A project may say::

    privacy: {pseudonymise: [ssn, email, phone], key_env: IDWEAVE_KEY}
    erasure: refuse            # or suppress (see linkage/forget.py)

The listed attributes are cleaned as their kind says, then replaced by a keyed hash,
HMAC-SHA256 with the key held in the environment variable ``key_env`` (default
``IDWEAVE_KEY``), before anything is stored, blocked or compared
(:func:`pseudonymiser`, called by ``sources.load_records`` on every row it cleans). The
store, the block keys, the links and the model then only ever see the hash, and exact
comparison works on it unchanged: equal cleaned values give equal hashes.

The key never reaches the store, the logs or the model JSON. What the store holds is a
*check value*, the HMAC of a fixed text under the key (:func:`check_value`), with the list
of pseudonymised attributes: every run compares it with the key it was given
(:func:`check_store`), so a wrong or missing key is a clear error rather than a silently
different linkage.

Near matches. A keyed hash hides how close two values are, so "one typo" needs a
representation that survives hashing. What is stored for a pseudonymised attribute
(:meth:`Pseudonymiser.encode`) is the value's hash followed by the keyed hashes of its
*one-deletion neighbourhood* (:func:`deletion_hashes`: the value and every string with one
character deleted), sorted and padded to ``len(value) + 1`` members: the symmetric-delete
idea of SymSpell (Wolf Garbe, 2012) and FastSS (Bocek, Hunt and Stiller, 2007), keyed. Two
values share a member exactly when deleting at most one character from each makes them
equal: every pair one substitution, insertion, deletion or swap of neighbours apart, and a
character deleted in one place with another inserted elsewhere. ``comparisons._hashed_ladder``
makes that the level "one edit apart (hashed variants in common)". Keyed Bloom-filter
encodings of bigrams (Schnell, Bachteler and Reiher, 2009) were not used: their bit patterns
carry bigram frequencies, which the attacks of Kuzu et al. (2011) and Christen et al. (2017)
exploit; here each member is a full HMAC and the overlap test is exact.

>>> p = Pseudonymiser({"ssn"}, b"k")
>>> p.hash("ssn", "123456780") == p.hash("ssn", "123456780"), p.hash("ssn", "123456780") == p.hash("ssn", "123456781")
(True, False)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any, Iterable, Mapping

import polars as pl

from idweave.linkage.errors import IdweaveError

__all__ = ["Pseudonymiser", "pseudonymiser", "check_value", "check_store", "check_project_store", "record_check", "deletion_hashes",
           "option_problems", "erasure_policy", "PrivacyKeyError", "DEFAULT_KEY_ENV"]

DEFAULT_KEY_ENV = "IDWEAVE_KEY"
_CHECK_TEXT = b"idweave key check v1"
_META_KEY = "privacy_check"
_ERASURE = ("refuse", "suppress")
_DEL = "\x01del"  # the domain of the deletion-neighbourhood hashes
_PAD = "\x01pad"  # and of the padding members
# The stored form (Pseudonymiser.encode), kept with the check value: a store of another form is refused.
_FORM = "hmac64+del1"


class PrivacyKeyError(IdweaveError):
    """The pseudonymisation key is missing, or is not the key the store was built with."""


# --------------------------------------------------------------------------------------
# the project keys
# --------------------------------------------------------------------------------------
def option_problems(data: Mapping[str, Any], attributes: Mapping[str, Any]) -> list[str]:
    """Problems in a project's ``erasure`` and ``privacy`` keys (``attributes``: the declared
    attribute names). Called by ``project.project_from_dict``.

    >>> option_problems({"erasure": "drop", "privacy": {"pseudonymise": ["ssn", "nope"]}}, {"ssn": 1})
    ["erasure: must be refuse or suppress, got 'drop'", "privacy.pseudonymise: 'nope' is not a declared attribute"]
    """
    problems = []
    erasure = data.get("erasure")
    if erasure is not None and erasure not in _ERASURE:
        problems.append(f"erasure: must be refuse or suppress, got {str(erasure)[:40]!r}")
    priv = data.get("privacy")
    if priv is None:
        return problems
    if not isinstance(priv, dict):
        return problems + ["privacy: must be a mapping (pseudonymise: [...], key_env: NAME)"]
    for k in priv:
        if k not in ("pseudonymise", "key_env"):
            problems.append(f"privacy.{str(k)[:40]}: unknown key; expected one of key_env, pseudonymise")
    names = priv.get("pseudonymise")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        problems.append("privacy.pseudonymise: must be a list of attribute names")
    else:
        for n in names:
            if n not in attributes:
                problems.append(f"privacy.pseudonymise: {n[:40]!r} is not a declared attribute")
    env = priv.get("key_env", DEFAULT_KEY_ENV)
    if not isinstance(env, str) or not env.strip():
        problems.append("privacy.key_env: must name an environment variable")
    return problems


def erasure_policy(project: Any) -> str:
    """``refuse`` (the default) or ``suppress``: what a run does with a record that was
    erased (``idweave forget``) and is still in its source."""
    return str((getattr(project, "raw", None) or {}).get("erasure") or "refuse")


def _config(project: Any) -> tuple[list[str], str] | None:
    priv = (getattr(project, "raw", None) or {}).get("privacy")
    if not priv:
        return None
    return list(priv.get("pseudonymise") or []), str(priv.get("key_env") or DEFAULT_KEY_ENV)


# --------------------------------------------------------------------------------------
# hashing
# --------------------------------------------------------------------------------------
class Pseudonymiser:
    """Keyed hashes of attribute values: ``hash(attribute, value)`` is the HMAC-SHA256 of
    ``attribute NUL value`` under the key, its first 72 bits in base64url (12 characters) (the attribute name is mixed in, so one
    person's phone and ssn never share a hash).

    What is stored for a pseudonymised attribute is :meth:`encode`: the value's hash, then
    the keyed hashes of its one-deletion neighbourhood (:func:`deletion_hashes`), space
    separated, so that "one edit apart" survives hashing."""

    def __init__(self, attributes: Iterable[str], key: bytes):
        self.attributes = set(attributes)
        self._key = key
        # HMAC (RFC 2104) by hand: the inner and outer SHA-256 states after the padded key,
        # copied per message. The same digests as ``hmac.new``, at a third of its cost per
        # call (it sets the key up each time), which counts: each value takes ~len+2 HMACs.
        block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\x00")
        self._inner = hashlib.sha256(bytes(x ^ 0x36 for x in block))
        self._outer = hashlib.sha256(bytes(x ^ 0x5C for x in block))

    def __repr__(self) -> str:  # never the key
        return f"Pseudonymiser({sorted(self.attributes)})"

    def hashes(self, attribute: str, values: list[str]) -> list[str]:
        """``hash(attribute, v)`` for each of ``values``, in one tight loop.

        >>> p = Pseudonymiser({"ssn"}, b"k")
        >>> p.hashes("ssn", ["1", "2"]) == [p.hash("ssn", "1"), p.hash("ssn", "2")]
        True
        """
        # The first 72 bits of each HMAC, in base64url: 12 characters, and 9 bytes encode to
        # exactly 12, so all of them are encoded at once and cut apart. Two distinct values of
        # a 10-million record register collide with probability ~1e-8; the comparison
        # ladder's string functions (run on every pair training samples) cost with the length.
        inner, outer = self._inner.copy, self._outer.copy
        prefix = attribute.encode() + b"\x00"
        out = bytearray()
        for v in values:
            h = inner()
            h.update(prefix + v.encode())
            o = outer()
            o.update(h.digest())
            out += o.digest()[:9]
        text = base64.urlsafe_b64encode(bytes(out)).decode()
        return [text[i:i + 12] for i in range(0, len(text), 12)]

    def hash(self, attribute: str, value: str) -> str:
        """The keyed hash of one value: HMAC-SHA256 of ``attribute NUL value``, its first 72
        bits in base64url (12 characters).

        >>> p = Pseudonymiser({"ssn"}, b"k")
        >>> p.hash("ssn", "123") == base64.urlsafe_b64encode(hmac.new(b"k", b"ssn\\x00123", hashlib.sha256).digest()[:9]).decode()
        True
        """
        return self.hashes(attribute, [value])[0]

    def encode(self, attribute: str, value: str) -> str:
        """The stored form of one cleaned value: its hash, a space, then its one-deletion
        neighbourhood's hashes (:func:`deletion_hashes`), sorted, padded to ``len(value) + 1``
        members with hashes no other value has (so their number gives the value's length
        only, not how many of its characters repeat). Two values share a member of their
        neighbourhoods exactly when deleting at most one character from each makes them
        equal (see :func:`deletion_hashes`); equal values give equal strings.

        >>> p = Pseudonymiser({"ssn"}, b"k")
        >>> a, b = p.encode("ssn", "123456789"), p.encode("ssn", "123456780")
        >>> len(a.split(" ")), a.split(" ")[0] == p.hash("ssn", "123456789"), a == p.encode("ssn", "123456789")
        (11, True, True)
        >>> bool(set(a.split(" ")[1:]) & set(b.split(" ")[1:])), len(p.encode("ssn", "111111111").split(" "))
        (True, 11)
        """
        return self.encode_many(attribute, [value])[0]

    def encode_many(self, attribute: str, values: list[str]) -> list[str]:
        """:meth:`encode` of each of ``values``, their HMACs computed in three tight loops."""
        near = [sorted({v} | {v[:i] + v[i + 1:] for i in range(len(v))}) for v in values]
        pads = [[f"{v}\x00{i}" for i in range(len(v) + 1 - len(n))] for v, n in zip(values, near)]
        exact = self.hashes(attribute, values)
        near_h = iter(self.hashes(attribute + _DEL, [x for n in near for x in n]))
        pad_h = iter(self.hashes(attribute + _PAD, [x for pd in pads for x in pd]))
        out = []
        for e, n, pd in zip(exact, near, pads):
            members = [next(near_h) for _ in n] + [next(pad_h) for _ in pd]
            out.append(" ".join([e, *sorted(members)]))
        return out

    def series(self, attribute: str, values: pl.Series) -> pl.Series:
        """A column of cleaned values -> their stored forms (:meth:`encode`; null stays
        null). Each distinct value is hashed once."""
        values = values.cast(pl.Utf8)
        uniq = values.drop_nulls().unique()
        if uniq.len() == 0:
            return values.alias(values.name)
        coded = pl.Series(self.encode_many(attribute, uniq.to_list()), dtype=pl.Utf8)
        return values.replace_strict(uniq, coded, default=None, return_dtype=pl.Utf8).alias(values.name)

    def __call__(self, cols: dict[str, pl.Series]) -> dict[str, pl.Series]:
        """Cleaned columns (attribute -> series) with the listed attributes hashed."""
        return {a: (self.series(a, s) if a in self.attributes else s) for a, s in cols.items()}

    def record(self, rec: dict[str, Any]) -> dict[str, Any]:
        """One cleaned record (attribute -> value) with the listed attributes in their stored
        form: what ``lookup`` compares a query with.

        >>> p = Pseudonymiser({"ssn"}, b"k")
        >>> r = p.record({"ssn": "123456789", "first_name": "ann", "phone": None})
        >>> r["ssn"] == p.encode("ssn", "123456789"), r["first_name"], r["phone"]
        (True, 'ann', None)
        """
        return {a: (self.encode(a, str(v)) if a in self.attributes and v is not None else v)
                for a, v in rec.items()}

    def check(self) -> str:
        return check_value(self._key)


def _key(env: str) -> bytes:
    raw = os.environ.get(env)
    if not raw:
        raise PrivacyKeyError(f"the project pseudonymises identifiers but the environment variable {env} is "
                              "not set: set it to the project's key", key="privacy.key_env")
    return raw.encode()


def pseudonymiser(project: Any) -> Pseudonymiser | None:
    """The project's :class:`Pseudonymiser`, or None when it pseudonymises nothing. A
    missing key is a :class:`PrivacyKeyError`.

    >>> from idweave.linkage.project import load_project
    >>> pseudonymiser(load_project("fixtures/tiny/project.yaml")) is None
    True
    """
    cfg = _config(project)
    if cfg is None:
        return None
    names, env = cfg
    return Pseudonymiser(names, _key(env))


def check_value(key: bytes) -> str:
    """The check value a store keeps for its key: the HMAC of a fixed text (it tells a wrong
    key from the right one and says nothing of the key).

    >>> check_value(b"a") == check_value(b"a"), check_value(b"a") == check_value(b"b")
    (True, False)
    """
    return hmac.new(key, _CHECK_TEXT, hashlib.sha256).hexdigest()


def _stored_check(st: Any) -> dict[str, Any] | None:
    value = st.meta_value(_META_KEY)
    return json.loads(value) if value is not None else None


def check_store(project: Any, st: Any) -> None:
    """Raise :class:`PrivacyKeyError` unless the store ``st`` was built with this project's
    key and pseudonymised attributes (or, for a project without ``privacy``, without any).
    A store with no records yet passes."""
    p = pseudonymiser(project)
    stored = _stored_check(st)
    has_records = st.has_records()
    label = str(st.path)
    if p is None:
        if stored is not None:
            raise PrivacyKeyError("the store holds pseudonymised identifiers but the project has no privacy "
                                  "section: restore it (same attributes, same key)", file=label)
        return
    if stored is None:
        if has_records:
            raise PrivacyKeyError("the store was built without pseudonymisation: link into a new store (or delete "
                                  "this one) to pseudonymise identifiers", file=label)
        return
    if sorted(stored.get("attributes", [])) != sorted(p.attributes):
        raise PrivacyKeyError(f"the store pseudonymises {', '.join(sorted(stored.get('attributes', [])))}, the "
                              f"project {', '.join(sorted(p.attributes))}: they must agree", file=label)
    if stored.get("form") != _FORM:
        raise PrivacyKeyError("the store holds an older form of pseudonymised identifiers (without the hashes "
                              "of their one-edit variants): link into a new store", file=label)
    if not hmac.compare_digest(str(stored.get("check", "")), p.check()):
        env = _config(project)[1]  # type: ignore[index]
        raise PrivacyKeyError(f"the key in {env} is not the key this store was built with", file=label,
                              key="privacy.key_env")


def check_project_store(project: Any) -> None:
    """:func:`check_store` on the project's store, opened read-only (a store that does not
    exist yet passes), so a wrong key never opens the store for writing. A missing key is an
    error even without a store."""
    from pathlib import Path

    from idweave.linkage.graph import Store

    pseudonymiser(project)
    store = Path(project.store)
    if not store.exists():
        return
    from idweave.linkage.errors import StoreBusyError

    try:
        with Store.open(store, read_only=True) as st:
            check_store(project, st)
    except StoreBusyError:
        pass  # another run holds it: the run checks again once it has the store (pipeline.py)


def record_check(project: Any, st: Any) -> None:
    """Keep the check value of the project's key in the store's ``meta`` table (inside the
    caller's transaction); nothing for a project without ``privacy``."""
    p = pseudonymiser(project)
    if p is None:
        return
    st.set_meta(_META_KEY, json.dumps({"attributes": sorted(p.attributes), "check": p.check(), "form": _FORM}))


def deletion_hashes(p: Pseudonymiser, attribute: str, value: str | None) -> list[str]:
    """The keyed hashes of ``value``'s one-deletion neighbourhood (the value and each string
    with one character deleted), sorted: two values within one typo share at least one.

    >>> p = Pseudonymiser({"ssn"}, b"k")
    >>> a, b, c = (set(deletion_hashes(p, "ssn", v)) for v in ("123456789", "123456780", "987654321"))
    >>> bool(a & b), bool(a & c)
    (True, False)
    >>> bool(a & set(deletion_hashes(p, "ssn", "213456789")))  # two digits swapped
    True
    """
    if value is None:
        return []
    variants = {value} | {value[:i] + value[i + 1:] for i in range(len(value))}
    return sorted(p.hashes(attribute + _DEL, sorted(variants)))
