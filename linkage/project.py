"""The project file: one YAML document that declares a linkage job.

Load it with :func:`load_project`; every problem in the file is reported at once, each with
its path in the file (``sources.tax.columns.birth_date: column 'dob' not in tax.parquet;
found: tin_row, given, family, born, ssn``).

>>> p = load_project("fixtures/demo/project.yaml")
>>> sorted(p.sources)
['benefits', 'census', 'tax']
>>> p.attributes["birth_date"].kind
'date'
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import polars as pl
import yaml

from idweave.blocking import derive_rules, parse_rules
from idweave.blocking.rules import Rule
from idweave.linkage.errors import ProjectError
from idweave.linkage.kinds import KINDS

__all__ = ["Attribute", "Source", "Project", "load_project", "project_from_dict", "resolve_project",
           "project_rules", "with_rids", "threshold_problem"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_RESERVED = {"source", "record_id", "rid", "entity_id", "cluster_id", "match_key", "unique_id"}
_ENGINES = ("duckdb", "spark")
_SPARK_KEYS = ("master", "conf", "checkpoint_dir")
_SOURCE_KEYS = {"path", "id", "columns", "date_format", "exclusive", "mode", "format", "encoding"}
_TOP_KEYS = {
    "store", "threshold", "attributes", "sources", "blocking", "comparisons", "engine", "spark",
    "model", "training", "clustering", "base_dir", "erasure", "privacy", "survivorship",
}
#: Survivorship rules of a golden record (``survivorship:``; see golden.py). ``source_priority``
#: takes a list of sources: ``{source_priority: [tax, census]}``.
SURVIVORSHIP_RULES = ("most_frequent", "longest", "most_recent", "first_non_null", "source_priority")
_FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
            ".ndjson": "ndjson", ".jsonl": "ndjson"}


@dataclass(frozen=True)
class Attribute:
    """A canonical field and its kind (which decides cleaning, comparison and blocking).

    >>> load_project("fixtures/tiny/project.yaml").attributes["ssn"]
    Attribute(name='ssn', kind='national_id')
    """

    name: str
    kind: str


@dataclass
class Source:
    """One registry: where its rows are, which column is the record id, and its column map.

    ``columns`` maps attribute -> column in the source. ``frame`` holds an in-memory table
    when the source was given as a frame rather than a path.

    >>> src = load_project("fixtures/tiny/project.yaml").sources["census"]
    >>> src.label, src.id, src.format, src.date_format
    ('census.csv', 'person_no', 'csv', '%m/%d/%Y')
    """

    name: str
    id: str
    columns: dict[str, str]
    path: str | None = None
    files: list[Path] = field(default_factory=list)
    format: str | None = None
    date_format: str | None = None
    exclusive: bool = False
    mode: str = "snapshot"
    frame: Any = None
    encoding: str | None = None  # of a CSV or NDJSON file that is not UTF-8 (readers transcode it)

    @property
    def label(self) -> str:
        """How errors name this source: its file, or ``<frame NAME>``."""
        if self.files:
            return self.files[0].name if len(self.files) == 1 else str(self.path)
        return f"<frame {self.name}>"


@dataclass
class Project:
    """A validated project. Build it with :func:`load_project` or :func:`project_from_dict`.

    >>> p = load_project("fixtures/tiny/project.yaml")
    >>> p.store.name, p.model_file.name, p.threshold, p.engine
    ('tiny.duckdb', 'tiny.model.json', 0.9, 'duckdb')
    """

    attributes: dict[str, Attribute]
    sources: dict[str, Source]
    store: Path
    threshold: float | None = None
    blocking: list[Any] | None = None
    comparisons: dict[str, Any] | None = None
    engine: str = "duckdb"
    spark: dict[str, Any] = field(default_factory=dict)
    model_path: Path | None = None
    training: dict[str, Any] = field(default_factory=dict)
    clustering: dict[str, Any] = field(default_factory=dict)
    file: Path | None = None
    base_dir: Path = Path(".")
    raw: dict[str, Any] = field(default_factory=dict)
    survivorship: dict[str, Any] = field(default_factory=dict)

    @property
    def model_file(self) -> Path:
        """Where the trained Splink model JSON lives (next to the store unless set)."""
        if self.model_path is not None:
            return self.model_path
        return self.store.with_name(self.store.stem + ".model.json")

    def config_hash(self) -> str:
        """A hash of the settings that change results (not of the data)."""
        # Survivorship picks golden values at export, and the Spark section says where the
        # Spark engine runs: neither changes a run's result.
        keep = {k: v for k, v in self.raw.items() if k not in ("store", "base_dir", "survivorship", "spark")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_project(path: str | Path, *, sources: Mapping[str, Any] | None = None) -> Project:
    """Read and validate a project file.

    ``sources`` may map source names to in-memory frames (polars, pandas or Arrow), which
    then stand in for the ``path`` of those sources.

    >>> load_project("fixtures/demo/project.yaml").sources["tax"].exclusive
    True
    """
    path = Path(path)
    if not path.exists():
        raise ProjectError([f"project file not found: {path}"], file=str(path))
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ProjectError(["the file must hold a mapping (store, attributes, sources, ...)"],
                           file=str(path))
    return project_from_dict(data, base_dir=path.parent, sources=sources, file=path)


# Limits on what a project file may make the YAML loader build: a few kilobytes of aliases
# ("billion laughs") or nesting must not exhaust memory, time or the stack. Real project
# files are far below every one of them.
MAX_PROJECT_BYTES = 4 * 1024 * 1024
MAX_YAML_DEPTH = 64
MAX_YAML_ALIASES = 1000
MAX_YAML_NODES = 200_000  # nodes of the document with every alias expanded


class _LimitExceeded(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with caps on nesting depth, alias uses and the expanded size of
    the document, and duplicate keys in a mapping refused (the second one would silently win)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                mark = self.peek_event().start_mark
                raise _LimitExceeded(f"more than {MAX_YAML_ALIASES} aliases (line {mark.line + 1}); "
                                     "a project file needs few or none")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise _LimitExceeded(f"nested more than {MAX_YAML_DEPTH} levels deep (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node):  # type: ignore[override]
        _check_expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = key_node.value
                    if key in seen:
                        raise _LimitExceeded(f"duplicate key '{_printable(key)}' at line "
                                             f"{key_node.start_mark.line + 1} (first at line {seen[key]}); "
                                             "each key may appear once in a mapping")
                    seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: Any) -> None:
    """Refuse a document whose nodes, with every alias expanded, exceed MAX_YAML_NODES."""
    sizes: dict[int, int] = {}
    # Nodes in post-order without recursion (depth is capped already, but stay iterative).
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        kids = ([c for kv in node.value for c in kv] if isinstance(node, yaml.MappingNode)
                else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if not done:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
            continue
        total = 1 + sum(sizes.get(id(k), 1) for k in kids)
        if total > MAX_YAML_NODES:
            raise _LimitExceeded(f"the document expands to more than {MAX_YAML_NODES:,} values "
                                 "(aliases repeated inside aliases); a project file is far smaller")
        sizes[id(node)] = total


def _type_name(value: Any) -> str:
    """How a message names a wrong value: its YAML type, and the value only when it is a
    short number or boolean (never a string: it may be data pasted in by mistake)."""
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return f"the {type(value).__name__ if not isinstance(value, bool) else 'boolean'} {value!r}"
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(type(value), "a value")


def _shown(value: Any) -> str:
    """A setting's value as a message quotes it: its repr, printable and at most 60 characters."""
    return _printable(repr(value) if not isinstance(value, (dict, list)) else _type_name(value))


def _printable(text: Any, limit: int = 60) -> str:
    """``text`` without control characters, cut to ``limit`` characters (for messages)."""
    out = "".join(c if c.isprintable() else "?" for c in str(text))
    return out if len(out) <= limit else out[:limit] + "..."


def _read_yaml(path: Path) -> Any:
    """The parsed project file, within the loader's limits; ProjectError otherwise."""
    label = str(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file"
        raise ProjectError([f"the project file is {what}; give a YAML file"], file=label)
    try:
        size = path.stat().st_size
        if size > MAX_PROJECT_BYTES:
            raise ProjectError([f"the project file is {size:,} bytes; the limit is {MAX_PROJECT_BYTES:,} "
                                "(a project file declares sources, it does not hold data)"], file=label)
        raw = path.read_bytes()
    except OSError as exc:
        raise ProjectError([f"cannot read the project file: {exc.strerror or exc.__class__.__name__}"],
                           file=label) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ProjectError([f"not UTF-8 text: byte {exc.start + 1} (line {line}) cannot be decoded; "
                            "save the project file as UTF-8"], file=label) from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise ProjectError([f"the project file holds a NUL byte at line {line}: it looks binary, not YAML"],
                           file=label)
    try:
        loader = _BoundedLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _LimitExceeded as exc:
        raise ProjectError([f"refused: {exc}"], file=label) from None
    except RecursionError:
        raise ProjectError([f"refused: nested too deeply (more than {MAX_YAML_DEPTH} levels)"], file=label) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or _yaml_reader_problem(exc)
        raise ProjectError([f"malformed YAML{where}: {_printable(problem, 200)}"], file=label) from None


def _yaml_reader_problem(exc: Exception) -> str:
    """A reader error (a character YAML does not allow) without the character's context."""
    if isinstance(exc, yaml.reader.ReaderError):
        ch = exc.character
        code = ch if isinstance(ch, int) else ord(ch[:1]) if ch else 0
        return f"character #x{code:04x} is not allowed (position {exc.position})"
    return "cannot be parsed"


def project_from_dict(
    data: Mapping[str, Any],
    *,
    base_dir: str | Path | None = None,
    sources: Mapping[str, Any] | None = None,
    file: Path | None = None,
) -> Project:
    """Validate a project given as a dict in the project-file form. Every problem is found
    before one :class:`~idweave.linkage.errors.ProjectError` lists them all.

    Relative paths resolve against ``base_dir`` (or a ``base_dir`` key, or the cwd).

    >>> p = project_from_dict({"store": "s.duckdb", "attributes": {"name": "full_name"},
    ...     "sources": {"a": {"path": "fixtures/demo/census.csv", "id": "person_no",
    ...                       "columns": {"name": "fname"}}}})
    >>> p.sources["a"].columns
    {'name': 'fname'}
    """
    data = dict(data)
    frames = dict(sources or {})
    problems: list[str] = []
    raw_base = base_dir if base_dir is not None else data.get("base_dir", ".")
    if not isinstance(raw_base, (str, Path)):
        problems.append(f"base_dir: must be a folder path, got {_type_name(raw_base)}")
        raw_base = "."
    base = Path(raw_base)

    for key in data:
        if key not in _TOP_KEYS:
            problems.append(f"{key}: unknown key; expected one of {', '.join(sorted(_TOP_KEYS - {'base_dir'}))}")
    store = _parse_store(data.get("store"), base, problems)
    threshold = _parse_threshold(data.get("threshold"), problems)
    raw_attrs = data.get("attributes")
    if not isinstance(raw_attrs, dict) or not raw_attrs:
        problems.append("attributes: required: a mapping of attribute name -> kind "
                        f"(kinds: {', '.join(KINDS)})")
        raw_attrs = {}
    attributes = _parse_attributes(raw_attrs, problems)
    src_objs = _parse_sources(data.get("sources"), raw_attrs, frames, base, problems)
    engine = _parse_engine(data.get("engine", "duckdb"), problems)
    spark = _parse_spark(data.get("spark"), base, problems)
    if data.get("model") is not None and (not isinstance(data["model"], str) or not data["model"]):
        problems.append("model: must be a file path for the trained model (e.g. out/project.model.json), "
                        f"got {_type_name(data['model'])}")
        data["model"] = None
    problems += _check_options_of(data, attributes, base)
    survivorship = _parse_survivorship(data.get("survivorship"), raw_attrs, list(src_objs), problems)
    # Column checks read the file headers (cheap) of every source whose path is sound, even
    # when other parts of the file have problems, so that one run reports everything.
    for src in src_objs.values():
        problems += _column_problems(src)
    if problems:
        raise ProjectError(problems, file=str(file) if file else None)

    model = data.get("model")
    return Project(
        attributes=attributes,
        sources=src_objs,
        store=store,
        threshold=threshold,
        blocking=data.get("blocking"),
        comparisons=data.get("comparisons"),
        engine=engine,
        spark=spark,
        model_path=_resolve(base, model) if model else None,
        training=dict(data.get("training") or {}),
        clustering=dict(data.get("clustering") or {}),
        file=file,
        base_dir=base,
        raw={k: v for k, v in data.items()},
        survivorship=survivorship,
    )


def _parse_survivorship(raw: Any, raw_attrs: Mapping[Any, Any], sources: list[str],
                        problems: list[str]) -> dict[str, Any]:
    """``survivorship:``: attribute -> a rule of :data:`SURVIVORSHIP_RULES` (``source_priority``
    as ``{source_priority: [SOURCE, ...]}``).

    >>> problems = []
    >>> _parse_survivorship({"name": "longest", "dob": "shortest"}, {"name": "full_name", "dob": "date"}, ["a"], problems)
    {'name': 'longest'}
    >>> problems
    ["survivorship.dob: unknown rule 'shortest'; expected one of most_frequent, longest, most_recent, first_non_null, {source_priority: [SOURCE, ...]}"]
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"survivorship: must be a mapping of attribute -> rule, got {_type_name(raw)}")
        return {}
    out: dict[str, Any] = {}
    shown = ", ".join(SURVIVORSHIP_RULES[:-1]) + ", {source_priority: [SOURCE, ...]}"
    for attr, rule in raw.items():
        at = f"survivorship.{_printable(attr)}"
        if attr not in raw_attrs:
            problems.append(f"{at}: not a declared attribute; declared: {', '.join(map(str, raw_attrs))}")
            continue
        if isinstance(rule, dict) and list(rule) == ["source_priority"]:
            order = rule["source_priority"]
            if not isinstance(order, list) or not order or not all(isinstance(x, str) for x in order):
                problems.append(f"{at}.source_priority: must be a list of source names, got {_type_name(order)}")
                continue
            unknown = [x for x in order if x not in sources]
            if unknown:
                problems.append(f"{at}.source_priority: no source {', '.join(map(_printable, unknown))}; "
                                f"sources are {', '.join(sources)}")
                continue
            out[attr] = {"source_priority": list(order)}
        elif isinstance(rule, str) and rule in SURVIVORSHIP_RULES[:-1]:
            out[attr] = rule
        else:
            problems.append(f"{at}: unknown rule {_shown(rule)}; expected one of {shown}")
    return out


def _parse_store(store_val: Any, base: Path, problems: list[str]) -> Path:
    if not store_val or not isinstance(store_val, (str, Path)):
        problems.append("store: required: a path for the identity store (e.g. out/project.duckdb)")
        return base / "idweave.duckdb"
    store = _resolve(base, str(store_val))
    msg = _store_path_problem(store)
    if msg:
        problems.append(f"store: {msg}")
    return store


def threshold_problem(threshold: Any) -> str | None:
    """What is wrong with a threshold (from a project file, a command or a caller), or None:
    one rule for all of them.

    >>> threshold_problem(0.9) is None, threshold_problem(2)
    (True, 'must be a match probability between 0 and 1 (exclusive), got 2')
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        return f"must be a match probability between 0 and 1 (exclusive), got {_shown(threshold)}"
    return None


def _parse_threshold(threshold: Any, problems: list[str]) -> float | None:
    if threshold is None:
        return None
    msg = threshold_problem(threshold)
    if msg:
        problems.append(f"threshold: {msg}")
        return None
    return float(threshold)


def _parse_attributes(raw_attrs: dict[Any, Any], problems: list[str]) -> dict[str, Attribute]:
    attributes: dict[str, Attribute] = {}
    for name, kind in raw_attrs.items():
        name = str(name)
        if isinstance(kind, dict):
            kind = kind.get("kind")
        if not _NAME.match(name) or name in _RESERVED:
            problems.append(f"attributes.{_printable(name)}: attribute names must be lower_snake_case and not one of "
                            f"{', '.join(sorted(_RESERVED))}")
            continue
        if name in sql_keywords():
            problems.append(f"attributes.{name}: '{name}' is an SQL keyword, which cannot name an attribute; "
                            f"rename it (e.g. {name}_value) and map the column to the new name")
            continue
        if kind not in KINDS:
            problems.append(f"attributes.{name}: unknown kind {_shown(kind)}; expected one of {', '.join(KINDS)}")
            continue
        attributes[name] = Attribute(name, kind)
    return attributes


def _parse_sources(raw_sources: Any, raw_attrs: dict[Any, Any], frames: dict[str, Any], base: Path,
                   problems: list[str]) -> dict[str, Source]:
    src_objs: dict[str, Source] = {}
    if not isinstance(raw_sources, dict) or not raw_sources:
        problems.append("sources: required: a mapping of source name -> {path, id, columns}")
        raw_sources = {}
    for sname, spec in raw_sources.items():
        src = _parse_source(str(sname), spec, raw_attrs, frames, base, problems)
        if src is not None:
            src_objs[src.name] = src
    for name in frames:
        if name not in raw_sources:
            problems.append(f"sources.{name}: a frame was given for a source the project does not declare")
    return src_objs


def _parse_source(sname: str, spec: Any, raw_attrs: dict[Any, Any], frames: dict[str, Any], base: Path,
                  problems: list[str]) -> Source | None:
    at = f"sources.{sname}"
    if not re.match(r"^[A-Za-z0-9_.-]+$", sname):
        problems.append(f"{at}: source names may hold letters, digits, '_', '-' and '.' only")
        return None
    if not isinstance(spec, dict):
        problems.append(f"{at}: must be a mapping with path, id and columns")
        return None
    problems += _unknown_keys(at, spec, _SOURCE_KEYS)
    id_col = spec.get("id")
    if not id_col or not isinstance(id_col, str):
        problems.append(f"{at}.id: required: the column holding the record id")
        id_col = ""
    cols = spec.get("columns")
    if not isinstance(cols, dict) or not cols:
        problems.append(f"{at}.columns: required: a mapping of attribute -> column")
        cols = {}
    columns: dict[str, str] = {}
    for attr, col in cols.items():
        if attr not in raw_attrs:
            problems.append(f"{at}.columns.{attr}: not a declared attribute; declared: "
                            f"{', '.join(map(str, raw_attrs)) or '(none)'}")
            continue
        if not isinstance(col, str) or not col:
            problems.append(f"{at}.columns.{attr}: must name a column")
            continue
        columns[str(attr)] = col
    mode = spec.get("mode", "snapshot")
    if mode not in ("snapshot", "append"):
        problems.append(f"{at}.mode: must be 'snapshot' or 'append', got {_shown(mode)}")
    exclusive = spec.get("exclusive", False)
    if not isinstance(exclusive, bool):
        problems.append(f"{at}.exclusive: must be true or false, got {_shown(exclusive)}")
        exclusive = False
    date_format = spec.get("date_format")
    if date_format is not None and (not isinstance(date_format, str) or "%" not in date_format):
        problems.append(f"{at}.date_format: must be a strftime pattern like '%d/%m/%Y', got {_shown(date_format)}")
        date_format = None
    src = Source(name=sname, id=id_col, columns=columns, date_format=date_format,
                 exclusive=exclusive, mode=mode, encoding=_parse_encoding(at, spec.get("encoding"), problems))
    if sname in frames:
        src.frame = frames[sname]
    else:
        _parse_source_path(src, spec, base, problems)
        if src.encoding and src.format == "parquet":
            problems.append(f"{at}.encoding: only for CSV and NDJSON files (Parquet text is always UTF-8)")
    return src


def _parse_encoding(at: str, encoding: Any, problems: list[str]) -> str | None:
    """A source's ``encoding`` (a codec name Python knows, e.g. latin-1, cp1252, utf-16)."""
    if encoding is None:
        return None
    if not isinstance(encoding, str) or not encoding.strip():
        problems.append(f"{at}.encoding: must be the name of a text encoding (e.g. latin-1, cp1252, utf-16), "
                        f"got {_shown(encoding)}")
        return None
    try:
        info = codecs.lookup(encoding)
    except (LookupError, ValueError):
        problems.append(f"{at}.encoding: unknown encoding {_shown(encoding)}; use a name Python knows "
                        "(e.g. latin-1, cp1252, utf-16)")
        return None
    if not getattr(info, "_is_text_encoding", True):
        problems.append(f"{at}.encoding: {_shown(encoding)} is not a text encoding")
        return None
    return encoding


def _parse_source_path(src: Source, spec: dict[str, Any], base: Path, problems: list[str]) -> None:
    """``src.path``, ``src.files`` and ``src.format`` from the source's ``path`` (a file or a
    glob) and ``format``."""
    at = f"sources.{src.name}"
    p = spec.get("path")
    if not p or not isinstance(p, str):
        problems.append(f"{at}.path: required: a csv, parquet or ndjson file (or a glob of several)")
        return
    src.path = p
    full = _resolve(base, p)
    files = sorted(Path(f) for f in glob.glob(str(full))) if glob.has_magic(p) else [full]
    odd = [m for m in (_source_file_problem(f) for f in files) if m]
    if odd:
        problems.append(f"{at}.path: {odd[0]}")
        files = []
    elif not files:
        problems.append(f"{at}.path: no file matches {full}")
    fmt = spec.get("format") or (_FORMATS.get(files[0].suffix.lower()) if files else None)
    if files and fmt not in ("csv", "parquet", "ndjson"):
        problems.append(f"{at}.path: cannot tell the format of {files[0].name}; "
                        "use .csv, .parquet or .ndjson, or set format")
    src.files, src.format = files, fmt


def _parse_engine(engine: Any, problems: list[str]) -> Any:
    if engine not in _ENGINES:
        problems.append(f"engine: must be one of {', '.join(_ENGINES)}, got {_shown(engine)}")
    return engine


def _unknown_keys(at: str, spec: dict[str, Any], keys: Any) -> list[str]:
    """A problem for each key of the mapping at ``at`` that is not one of ``keys``."""
    return [f"{at}.{_printable(key)}: unknown key; expected one of {', '.join(sorted(keys))}"
            for key in spec if key not in keys]


def _parse_spark(spec: Any, base: Path, problems: list[str]) -> dict[str, Any]:
    """The ``spark:`` section: ``master`` (a Spark master URL; default: the one ``spark-submit``
    or a notebook's session has, else ``local[*]``), ``conf``
    (Spark settings, name -> value) and ``checkpoint_dir`` (a folder, relative to the project
    file). It is read whatever the engine, so that switching ``engine`` is one line.

    >>> _parse_spark({"master": "local[2]", "conf": {"spark.executor.memory": "4g"}}, Path("."), [])
    {'master': 'local[2]', 'conf': {'spark.executor.memory': '4g'}, 'checkpoint_dir': None}
    >>> problems = []; _ = _parse_spark({"master": 2, "conf": {"a": [1]}, "jars": "x"}, Path("."), problems)
    >>> problems  # doctest: +NORMALIZE_WHITESPACE
    ['spark.jars: unknown key; expected one of checkpoint_dir, conf, master',
     'spark.master: must be a Spark master URL such as local[*] or yarn, got the int 2',
     'spark.conf.a: must be a string, number or boolean, got a list']
    """
    out: dict[str, Any] = {"master": None, "conf": {}, "checkpoint_dir": None}
    if spec is None:
        return out
    if not isinstance(spec, dict):
        problems.append(f"spark: must be a mapping (master, conf, checkpoint_dir), got {_type_name(spec)}")
        return out
    problems += _unknown_keys("spark", spec, _SPARK_KEYS)
    master = spec.get("master")
    if master is None:
        pass  # the session's own (spark-submit, a notebook), else local[*]
    elif not isinstance(master, str) or not master.strip():
        problems.append(f"spark.master: must be a Spark master URL such as local[*] or yarn, got {_type_name(master)}")
    else:
        out["master"] = master.strip()
    conf = spec.get("conf") or {}
    if not isinstance(conf, dict):
        problems.append(f"spark.conf: must be a mapping of Spark setting -> value, got {_type_name(conf)}")
        conf = {}
    for k, v in conf.items():
        if isinstance(v, bool):
            out["conf"][str(k)] = "true" if v else "false"
        elif isinstance(v, (str, int, float)):
            out["conf"][str(k)] = str(v)
        else:
            problems.append(f"spark.conf.{_printable(k)}: must be a string, number or boolean, got {_type_name(v)}")
    ckpt = spec.get("checkpoint_dir")
    if ckpt is not None:
        if not isinstance(ckpt, str) or not ckpt:
            problems.append(f"spark.checkpoint_dir: must be a folder path, got {_type_name(ckpt)}")
        else:
            out["checkpoint_dir"] = _resolve(base, ckpt) if "://" not in ckpt else ckpt
    return out


def _check_options_of(data: dict[str, Any], attributes: dict[str, Attribute], base: Path) -> list[str]:
    """Problems of the blocking, comparisons, training, clustering, erasure and privacy keys."""
    from idweave.linkage.privacy import option_problems  # erasure and privacy keys (privacy.py)

    problems: list[str] = []
    if data.get("blocking") is not None:
        problems += _check_blocking(data["blocking"], attributes)
    if data.get("comparisons") is not None:
        problems += _check_comparisons(data["comparisons"], attributes)
    for key in ("training", "clustering"):
        if data.get(key) is not None and not isinstance(data.get(key), dict):
            problems.append(f"{key}: must be a mapping")
    problems += _check_options(data.get("training"), data.get("clustering"), base)
    problems += option_problems(data, attributes)
    return problems


def _column_problems(src: Source) -> list[str]:
    """The source's id and mapped columns against its file header (or frame)."""
    from idweave.linkage.readers import nested_columns, source_schema

    if src.frame is None and (not src.files or src.format not in ("csv", "parquet", "ndjson")):
        return []  # its path problem is already reported
    try:
        schema = source_schema(src)
    except Exception as exc:  # unreadable file: report it as that source's problem
        return [f"sources.{src.name}.path: {_read_problem(src, exc)}"]
    problems = []
    found = list(schema)
    shown = _found_columns(found, [src.id, *src.columns.values()], header_row=src.format == "csv"
                           and src.frame is None)
    for attr, col in src.columns.items():
        if col in nested_columns(schema, [col]):
            problems.append(f"sources.{src.name}.columns.{attr}: column '{col}' of {src.label} holds "
                            f"{schema[col]} values; an attribute needs one value per record")
    if src.id and src.id not in found:
        problems.append(f"sources.{src.name}.id: column '{src.id}' not in {src.label}; found: {shown}")
    for attr, col in src.columns.items():
        if col not in found:
            problems.append(f"sources.{src.name}.columns.{attr}: column '{col}' not in {src.label}; "
                            f"found: {shown}")
    return problems


def resolve_project(project: Project | str | Path | Mapping[str, Any], *,
                    sources: Mapping[str, Any] | None = None) -> Project:
    """Accept a Project, a path to a project file, or a dict in the project-file form."""
    if isinstance(project, Project):
        if sources:
            for name, frame in sources.items():
                project.sources[name].frame = frame
        return project
    if isinstance(project, (str, Path)):
        return load_project(project, sources=sources)
    return project_from_dict(project, sources=sources)


def project_rules(project: Project, records: pl.DataFrame | None = None, *,
                  present: set[str] | None = None, n_records: int | None = None) -> list[Rule]:
    """The project's blocking rules, or the ones derived from its kinds.

    Derived rules only use attributes some record has (of ``records``, or the names in
    ``present``), so a project with an attribute no source maps does not pay for rules that
    can find nothing. Their block caps follow the number of records (``n_records``, or the
    height of ``records``): see :func:`~idweave.blocking.rules.derive_rules`.

    >>> from idweave.linkage.project import load_project
    >>> len(project_rules(load_project("fixtures/tiny/project.yaml"))) > 0
    True
    """
    kinds = {a.name: a.kind for a in project.attributes.values()}
    if project.blocking is not None:
        return parse_rules(project.blocking, attributes=kinds)
    if records is not None:
        kinds = {a: k for a, k in kinds.items() if records[a].null_count() < records.height}
    if present is not None:
        kinds = {a: k for a, k in kinds.items() if a in present}
    return derive_rules(kinds, n_records if n_records is not None or records is None else records.height)


def with_rids(records: pl.DataFrame) -> pl.DataFrame:
    """Records in a fixed order (source, record_id) with ``rid`` = row number, so the same
    input always gets the same rids."""
    return records.sort("source", "record_id").with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))


@lru_cache(maxsize=1)
def sql_keywords() -> frozenset[str]:
    """The words that cannot name an attribute: DuckDB's reserved keywords and those it keeps
    for types and functions (``select``, ``order``, ``group``, ``from``, ``left``, ``join``,
    ...), as DuckDB itself lists them.

    Attribute names become column names in the SQL the engine writes (Splink's among it,
    which does not quote every identifier), so a keyword there breaks training with a parser
    error; refusing it up front names the problem. Source names are values in that SQL,
    never identifiers, so any word may name a source.

    >>> {"select", "order", "group", "from"} <= sql_keywords()
    True
    >>> "first_name" in sql_keywords()
    False
    """
    import duckdb

    rows = duckdb.connect().execute("select keyword_name from duckdb_keywords() "
                                    "where keyword_category in ('reserved', 'type_function')").fetchall()
    return frozenset(r[0].lower() for r in rows)


def _source_file_problem(f: Path) -> str | None:
    """Why ``f`` cannot be read as a source file, or None. Decided by ``stat`` alone: a FIFO
    or device is never opened (reading one could block for ever)."""
    import errno
    import stat

    try:
        st = f.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{f} is a symbolic link that loops (it never reaches a file)"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"file not found: {f}"
        return f"cannot read {f}: {exc.strerror or exc.__class__.__name__}"
    if stat.S_ISDIR(st.st_mode):
        return f"{f} is a folder; give a file, or a glob such as {f / '*.csv'}"
    if not stat.S_ISREG(st.st_mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) \
            else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file"
        return f"{f} is {kind}, not a regular file; idweave reads only regular files"
    return None


def _store_path_problem(store: Path) -> str | None:
    """Why a store can never live at ``store`` (whatever the command), or None.

    Writability itself is checked when a command opens the store for writing: read-only
    commands (export, explain) must work on a store in a read-only folder.
    """
    if store.is_dir():
        return f"{store} is a folder; give a file path such as {store / 'project.duckdb'}"
    probe = store.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"cannot create {store}: {probe} is a file, not a folder"
    return None


def _read_problem(src: Source, exc: Exception) -> str:
    """A one-line reason a source's header cannot be read (no data values)."""
    import polars as pl

    from idweave.linkage.errors import SourceError

    if isinstance(exc, pl.exceptions.NoDataError):
        return f"{src.label} is empty (not even a header row)"
    if isinstance(exc, SourceError):
        return str(exc)
    # Not the library's message: it may quote the file's content.
    return f"cannot read {src.label} ({exc.__class__.__name__})"


_LOOKS_LIKE_DATA = re.compile(r"\d{3,}|@|^\s*[-+]?\d+([.,/: -]\d+)*\s*$|^\s|\s$")


def _found_columns(found: list[str], expected: list[str], *, header_row: bool) -> str:
    """The "found: ..." list of a message about a missing column. For a CSV whose first row
    does not look like a header (no expected column in it, and cells that look like values:
    long digit runs, @, dates, numbers), the names are not printed: they would be the first
    record's values. Names are printed without control characters."""
    names = ["".join(c if c.isprintable() else "?" for c in n)[:60] for n in found]
    if header_row and not any(e in found for e in expected) and (
            any(_LOOKS_LIKE_DATA.search(n) for n in found) or names != found):
        return (f"{len(found)} column(s) whose names look like data, not a header (is the header row missing, "
                "or is the file not CSV?)")
    return ", ".join(names[:30]) + (" ..." if len(names) > 30 else "")


def _resolve(base: Path, p: str) -> Path:
    """``p`` against ``base``, with ``..`` folded (messages print ``out/demo.duckdb``, not
    ``fixtures/demo/../../out/demo.duckdb``)."""
    import os

    q = Path(p).expanduser()
    return Path(os.path.normpath(q if q.is_absolute() else base / q))


def _check_blocking(blocking: Any, attributes: dict[str, Attribute]) -> list[str]:
    from idweave.blocking.rules import parse_rules

    try:
        parse_rules(blocking, attributes={a: x.kind for a, x in attributes.items()})
    except ValueError as exc:
        return [f"blocking: {exc}"]
    return []


def _check_comparisons(comparisons: Any, attributes: dict[str, Attribute]) -> list[str]:
    from idweave.linkage.kinds import check_comparison_override

    if not isinstance(comparisons, dict):
        return ["comparisons: must be a mapping of attribute -> comparison"]
    problems = []
    for attr, spec in comparisons.items():
        if attr not in attributes:
            problems.append(f"comparisons.{attr}: not a declared attribute")
            continue
        msg = check_comparison_override(spec)
        if msg:
            problems.append(f"comparisons.{attr}: {msg}")

    def off(spec: Any) -> bool:
        return spec is False or spec == "off" or (isinstance(spec, dict) and spec.get("method") == "off")

    if attributes and all(a in comparisons and off(comparisons[a]) for a in attributes):
        problems.append("comparisons: every attribute is switched off; at least one must be compared")
    return problems


_TRAINING_KEYS = {"u_max_pairs": "a number of pairs", "seed": "a whole number",
                  "m_from_labels": "a pair-label file (Splink's clerical format)",
                  "m_from_column": "a truth column present in the sources"}
_CLUSTERING_KEYS = {"method": "components or average", "min_average": "a probability between 0 and 1"}


def _check_options(training: Any, clustering: Any, base: Path) -> list[str]:
    """Problems in the ``training`` and ``clustering`` sections."""
    problems = []
    if isinstance(training, dict):
        for k, v in training.items():
            if k not in _TRAINING_KEYS:
                problems.append(f"training.{k}: unknown key; expected one of {', '.join(_TRAINING_KEYS)}")
            elif k == "m_from_labels" and not (isinstance(v, str) and _resolve(base, v).exists()):
                problems.append(f"training.m_from_labels: file not found: {_resolve(base, str(v))}")
            elif k == "m_from_column" and not isinstance(v, str):
                problems.append("training.m_from_column: must name a column")
            elif k in ("u_max_pairs", "seed") and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
                problems.append(f"training.{k}: must be {_TRAINING_KEYS[k]} > 0, got {_shown(v)}")
    if isinstance(clustering, dict):
        for k, v in clustering.items():
            if k not in _CLUSTERING_KEYS:
                problems.append(f"clustering.{k}: unknown key; expected one of {', '.join(_CLUSTERING_KEYS)}")
            elif k == "method" and v not in ("components", "average"):
                problems.append(f"clustering.method: must be components or average, got {_shown(v)}")
            elif k == "min_average" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1):
                problems.append(f"clustering.min_average: must be between 0 and 1, got {_shown(v)}")
    return problems
