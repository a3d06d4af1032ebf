"""Four population registers of one simulated town, from pseudopeople's bundled sample.

pseudopeople (IHME, PyPI) simulates a US population for testing entity resolution: households,
movers, twins, nicknames, fake names, copied household members' values, typos and OCR errors.
This module turns its sample town into four registries that share no key and no schema, the way
a user of idweave meets them:

| source | file | id | what it holds | dates |
|---|---|---|---|---|
| ``census`` | census.csv | ``person_ref`` | 2020 decennial census: names, DOB, sex, address | ``%m/%d/%Y`` |
| ``ssa`` | ssa.parquet | ``event_no`` | social-security events (creation, death): SSN, names, DOB, sex | ``%Y%m%d`` |
| ``w2`` | w2.ndjson | ``form_id`` | W-2 and 1099 forms: SSN, names, mailing address | none |
| ``f1040`` | f1040.csv | ``return_id`` | 1040 returns, primary filer: SSN, names, mailing address | none |

Truth (``source``, ``record_id``, ``person`` = pseudopeople's ``simulant_id``, ``household``)
is kept apart from the registries and never reaches idweave or Splink. ``household`` is the
record's own ``household_id`` where the registry has one, else the person's census household.

``noise`` scales every column-noise cell probability of pseudopeople's default configuration
(``noise=2`` is "doubled cell noise"); ``seed`` is pseudopeople's seed.

Example::

    from registries import build
    town = build(seed=0, noise=1.0)
    town.n_records, sorted(town.frames)
"""
from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass

import pandas as pd

from datasets import BenchDataset

#: attributes and kinds only: what a new user writes
ATTRIBUTES = {
    "first_name": "given_name",
    "middle_name": "given_name",
    "last_name": "family_name",
    "birth_date": "date",
    "sex": "sex",
    "ssn": "national_id",
    "address": "address",
    "city": "city",
    "zipcode": "postcode",
}

FILES = {"census": "census.csv", "ssa": "ssa.parquet", "w2": "w2.ndjson", "f1040": "f1040.csv"}


@dataclass
class Town(BenchDataset):
    """A BenchDataset whose truth also names each record's household (``household``)."""

    seed: int = 0
    noise: float = 1.0


def _config(noise: float) -> dict:
    import pseudopeople as psp

    cfg = copy.deepcopy(psp.get_config())
    for dataset in cfg.values():
        for column in dataset.get("column_noise", {}).values():
            for spec in column.values():
                if isinstance(spec, dict) and "cell_probability" in spec:
                    spec["cell_probability"] = min(1.0, spec["cell_probability"] * noise)
    return cfg


def _address(number: pd.Series, street: pd.Series, unit: pd.Series) -> pd.Series:
    parts = pd.concat([number, street, unit], axis=1).astype("string")
    out = parts.apply(lambda r: " ".join(v for v in r if isinstance(v, str) and v.strip()), axis=1)
    return out.where(out.str.len() > 0)


def _text(df: pd.DataFrame) -> pd.DataFrame:
    """Every column as nullable text (pseudopeople mixes categories and objects)."""
    return df.astype("string").astype(object).where(df.notna(), None)


def build(seed: int = 0, noise: float = 1.0) -> Town:
    """The four registries of pseudopeople's sample town at this seed and noise multiplier."""
    import pseudopeople as psp

    logging.getLogger("pseudopeople").setLevel(logging.WARNING)
    cfg = _config(noise)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        census = psp.generate_decennial_census(seed=seed, config=cfg)
        ssa = psp.generate_social_security(seed=seed, config=cfg)
        w2 = psp.generate_taxes_w2_and_1099(seed=seed, config=cfg)
        f1040 = psp.generate_taxes_1040(seed=seed, config=cfg)

    frames = {
        "census": _text(pd.DataFrame({
            "person_ref": [f"P{i:06d}" for i in range(len(census))],
            "given": census.first_name, "mi": census.middle_initial, "surname": census.last_name,
            "dob": census.date_of_birth, "sex": census.sex,
            "street_address": _address(census.street_number, census.street_name, census.unit_number),
            "town": census.city, "zip": census.zipcode})),
        "ssa": _text(pd.DataFrame({
            "event_no": [f"{i:07d}" for i in range(len(ssa))],
            "ssn": ssa.ssn, "first": ssa.first_name, "middle": ssa.middle_name, "last": ssa.last_name,
            "date_of_birth": ssa.date_of_birth, "gender": ssa.sex, "event": ssa.event_type})),
        "w2": _text(pd.DataFrame({
            "form_id": [f"W-{i:06d}" for i in range(len(w2))],
            "employee_ssn": w2.ssn, "employee_first": w2.first_name, "employee_mi": w2.middle_initial,
            "employee_last": w2.last_name,
            "mail_street": _address(w2.mailing_address_street_number, w2.mailing_address_street_name,
                                    w2.mailing_address_unit_number),
            "mail_city": w2.mailing_address_city, "mail_zip": w2.mailing_address_zipcode,
            "form": w2.tax_form})),
        "f1040": _text(pd.DataFrame({
            "return_id": [f"R{i:06d}" for i in range(len(f1040))],
            "filer_ssn": f1040.ssn, "filer_first": f1040.first_name, "filer_mi": f1040.middle_initial,
            "filer_last": f1040.last_name,
            "address_line": _address(f1040.mailing_address_street_number, f1040.mailing_address_street_name,
                                     f1040.mailing_address_unit_number),
            "city": f1040.mailing_address_city, "zip5": f1040.mailing_address_zipcode})),
    }
    ids = {"census": "person_ref", "ssa": "event_no", "w2": "form_id", "f1040": "return_id"}
    home = census.drop_duplicates("simulant_id").set_index("simulant_id")["household_id"]
    truth = []
    for src, raw in (("census", census), ("ssa", ssa), ("w2", w2), ("f1040", f1040)):
        person = raw.simulant_id.astype(str).to_numpy()
        household = (raw.household_id if "household_id" in raw else
                     raw.simulant_id.map(home)).astype("string")
        # a person the census never saw has a household of their own
        household = household.fillna("alone-" + raw.simulant_id.astype(str))
        truth.append(pd.DataFrame({"source": src, "record_id": frames[src][ids[src]].astype(str).to_numpy(),
                                   "person": person, "household": household.to_numpy()}))
    columns = {
        "census": {"first_name": "given", "middle_name": "mi", "last_name": "surname", "birth_date": "dob",
                   "sex": "sex", "address": "street_address", "city": "town", "zipcode": "zip"},
        "ssa": {"ssn": "ssn", "first_name": "first", "middle_name": "middle", "last_name": "last",
                "birth_date": "date_of_birth", "sex": "gender"},
        "w2": {"ssn": "employee_ssn", "first_name": "employee_first", "middle_name": "employee_mi",
               "last_name": "employee_last", "address": "mail_street", "city": "mail_city",
               "zipcode": "mail_zip"},
        "f1040": {"ssn": "filer_ssn", "first_name": "filer_first", "middle_name": "filer_mi",
                  "last_name": "filer_last", "address": "address_line", "city": "city", "zipcode": "zip5"},
    }
    formats = {"census": "%m/%d/%Y", "ssa": "%Y%m%d"}
    sources = {}
    for src in frames:
        sources[src] = {"path": FILES[src], "id": ids[src], "columns": columns[src]}
        if src in formats:
            sources[src]["date_format"] = formats[src]
    project = {"attributes": dict(ATTRIBUTES), "sources": sources}
    return Town(name=f"town_s{seed}_n{noise:g}", frames=frames, id_column="",
                truth=pd.concat(truth, ignore_index=True), link_only=False, project=project,
                files=dict(FILES), seed=seed, noise=noise)
