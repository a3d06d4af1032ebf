"""idweave.blocking: candidate pairs from blocking rules, in polars.

>>> from idweave.blocking import derive_rules
>>> [r.name for r in derive_rules({"ssn": "national_id"})]
['ssn']
"""

from idweave.blocking.keys import TRANSFORMS, apply_transforms, canonical_names, key_values
from idweave.blocking.pairs import DEFAULT_MAX_BLOCK, PairStats, count_pairs, generate_pairs, rule_pairs
from idweave.blocking.rules import Key, Rule, derive_rules, parse_rules

__all__ = [
    "TRANSFORMS", "apply_transforms", "canonical_names", "key_values", "DEFAULT_MAX_BLOCK", "PairStats", "count_pairs",
    "generate_pairs", "rule_pairs", "Key", "Rule", "derive_rules", "parse_rules",
]
