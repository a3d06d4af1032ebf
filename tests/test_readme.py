"""The README: the quick start works as written, the library example runs, every command,
option, kind, key, transform and comparison method is documented, and links resolve."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import typer.main

from conftest import FIXTURES, ROOT, run_cli

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """The text of the ``## title`` section, up to the next ``## `` heading."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.M | re.S)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def code_blocks(text: str, lang: str = "") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def quick_start_commands() -> list[str]:
    return [line for line in code_blocks(section("Quick start"))[0].splitlines() if line.strip()]


def ci_command() -> str:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith(("#", "set ", "cd "))]
    assert len(commands) == 1, commands
    return commands[0]


def commands() -> dict:
    from idweave.cli.app import _register, app

    _register()
    return typer.main.get_command(app).commands


# ------------------------------------------------------------------ quick start
def test_the_readme_opens_with_the_quick_start() -> None:
    headings = re.findall(r"^## (.*)$", README, flags=re.M)
    assert headings[0] == "Quick start"


def test_the_quick_start_is_two_commands() -> None:
    assert quick_start_commands() == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/idweave link fixtures/demo/project.yaml",
        ci_command(),
    ]


def test_ci_runs_the_readme_test_command() -> None:
    assert ci_command() == ("([ -x /usr/bin/chromium ] || (apt-get update -q && apt-get install -y -q chromium)) && "
                            "(command -v java >/dev/null || (apt-get update -q && apt-get install -y -q "
                            "openjdk-17-jre-headless)) && "
                            "python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[test]' "
                            "&& python -m pytest -q")


def test_the_first_command_links_the_demo_and_prints_its_summary(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Run its idweave part exactly as written, from a copy of the repository's fixtures.
    last = quick_start_commands()[0].split("&&")[-1]
    program, *args = shlex.split(last)
    assert program == ".venv/bin/idweave"
    shutil.copytree(FIXTURES, tmp_path / "fixtures", ignore=shutil.ignore_patterns("out", "__pycache__"))
    monkeypatch.chdir(tmp_path)
    result = run_cli(*args)
    assert result.code == 0, result.err
    # The record counts of fixtures/README.md.
    for source, n in (("census", 331), ("tax", 279), ("benefits", 264)):
        assert re.search(rf"│ records in {source}\s+│\s+{n} │", result.out), source
    for label in ("candidate pairs", "links at threshold", "entities", "entity sizes", "time per stage"):
        assert label in result.out
    assert (tmp_path / "out" / "demo.duckdb").is_file() and (tmp_path / "out" / "demo.model.json").is_file()


# ------------------------------------------------------------------ library example
def test_the_library_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture) -> None:
    blocks = code_blocks(section("Library use from pipelines"), "python")
    assert len(blocks) == 1
    shutil.copytree(FIXTURES, tmp_path / "fixtures", ignore=shutil.ignore_patterns("out", "__pycache__"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md (library example)", "exec"), namespace)
    entities = namespace["entities"]
    assert entities.columns == ["source", "record_id", "entity_id"]
    assert entities.height == 331 + 279 + 264
    assert namespace["result"].summary["records_per_source"] == {"census": 331, "tax": 279, "benefits": 264}
    printed = capsys.readouterr().out
    assert printed.startswith("{'census': 331, 'tax': 279, 'benefits': 264} ")
    assert (tmp_path / "out" / "pipeline.duckdb").is_file()


# ------------------------------------------------------------------ commands
def command_sections() -> dict[str, str]:
    text = section("Commands")
    parts = re.split(r"^### `idweave ([a-z-]+)`\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_command_is_documented() -> None:
    documented = command_sections()
    missing = sorted(set(commands()) - set(documented))
    assert missing == [], f"add a '### `idweave NAME`' section under '## Commands' for: {missing}"


def test_no_command_is_documented_that_does_not_exist() -> None:
    assert sorted(set(command_sections()) - set(commands())) == []


def test_every_option_is_documented() -> None:
    documented = command_sections()
    missing = []
    for name, cmd in commands().items():
        for param in cmd.params:
            if param.param_type_name != "option" or param.name == "help":
                continue
            if not any(opt in documented.get(name, "") for opt in param.opts if opt.startswith("--")):
                missing.append(f"{name} {param.opts[0]}")
    assert missing == []


def test_the_debug_option_is_documented() -> None:
    assert "--debug" in section("Commands")


# ------------------------------------------------------------------ project file and kinds
def test_every_project_key_is_documented() -> None:
    from idweave.linkage import project

    text = section("The project file")
    for key in sorted((project._TOP_KEYS - {"base_dir"}) | project._SOURCE_KEYS):
        assert f"| `{key}` |" in text, key
    # The keys of the training and clustering sections, where the project module lists them.
    for key in [*getattr(project, "_TRAINING_KEYS", ()), *getattr(project, "_CLUSTERING_KEYS", ())]:
        assert f"`{key}`" in text, key


def test_every_kind_is_documented() -> None:
    from idweave.linkage.kinds import KINDS

    text = section("Attribute kinds and their cleaning")
    assert [k for k in KINDS if f"| `{k}` |" not in text] == []


def test_every_transform_and_comparison_method_is_documented() -> None:
    from idweave.blocking import TRANSFORMS
    from idweave.linkage.kinds import COMPARISON_METHODS

    text = section("The project file")
    assert [t for t in TRANSFORMS if f"`{t}`" not in text] == []
    assert [m for m in COMPARISON_METHODS if f"`{m}`" not in text] == []


def test_sections_others_write_are_there() -> None:
    for title in ("How the model is derived", "Identity store", "Reviewing"):
        assert section(title).strip()


def test_links_inside_the_readme_resolve() -> None:
    def anchor(heading: str) -> str:  # GitHub's rule: lower case, punctuation dropped, spaces to '-'
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    anchors = {anchor(h) for h in re.findall(r"^#+ (.*)$", README, flags=re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", README)
    assert links and [link for link in links if link not in anchors] == []
    for target in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (ROOT / target).exists(), target
