"""The docs are a reference that holds: every citation of a document's heading names a heading that exists,
every relative link resolves, and the README's examples run as written.

A citation is a document name followed by one or more quoted headings, as the code and params write them:
``docs/LOG.md, "Thread counts per stage"``, ``README.md ("Your own model")``, ``docs/LOG.md ("A", "B")``, or an
anchor, ``docs/RESULTS.md#train_controller``. A quoted heading must equal a heading of that document (backticks
aside), or its leading part up to a ": " or " (", where exactly one heading starts so (``"Which loss"`` for
``Which loss: the seed's pairwise ranking loss and each departure (issue 30)``).
Citations may wrap across comment lines and implicitly concatenated string literals.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()
#: The chronological log that docs/LOG.md (by date) and docs/RESULTS.md (current figures) replaced.
RETIRED = "BENCH" + "MARKS.md"

SCANNED_DIRS = ("src", "stages", "benchmarks", "tests")
SCANNED_SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".toml", ".md", ".txt"}
SCANNED_FILES = ("params.yaml", "dvc.yaml", "pyproject.toml", "README.md")


def scanned_files() -> list[Path]:
    files = [ROOT / name for name in SCANNED_FILES if (ROOT / name).exists()]
    files += sorted((ROOT / "docs").glob("*.md"))
    for folder in SCANNED_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if (path.is_file() and path.suffix in SCANNED_SUFFIXES and path != THIS and "__pycache__" not in path.parts
                    and not any(part.endswith(".egg-info") for part in path.parts)
                    and "results" not in path.relative_to(ROOT).parts):
                files.append(path)
    return files


def markdown_docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


#: Docs whose examples run as written. The extension guides (docs/adding-*.md) show fragments to paste into a
#: module or a hypothetical new params key, so their examples are not run.
REFERENCE_DOCS = (ROOT / "README.md", ROOT / "docs" / "STAGES.md")


# ---------------------------------------------------------------- headings


def strip_fences(text: str) -> str:
    """The text without fenced code blocks (a `# comment` in a shell block is not a heading)."""
    return re.sub(r"^```.*?^```[^\n]*$", "", text, flags=re.DOTALL | re.MULTILINE)


def norm(heading: str) -> str:
    return " ".join(heading.replace("`", "").split())


@cache
def headings(doc: Path) -> tuple[str, ...]:
    return tuple(norm(m.group(2)) for m in re.finditer(r"^(#{1,6})\s+(.+?)\s*#*\s*$", strip_fences(doc.read_text()),
                                                       flags=re.MULTILINE))


def names(doc: Path, quote: str) -> bool:
    """Whether ``quote`` names one heading of ``doc``: the heading itself, or the leading part of exactly one, cut
    before a subtitle (": ") or a parenthesis (" (")."""
    heads, q = headings(doc), norm(quote)
    return q in heads or sum(h.startswith((q + ": ", q + " (")) for h in heads) == 1


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (before the -1, -2 suffixes of repeated ones)."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


# ---------------------------------------------------------------- citations


def joined(path: Path) -> str:
    """The file as one line: comment markers and implicit string concatenation removed, so a citation that wraps
    is read whole."""
    text = path.read_text()
    if path.suffix == ".py":
        text = re.sub(r"([\"'])\s*\n\s*[rbfRBF]{0,2}\1", "", text)  # "...(README.md, "\n   "'Your own model')"
        text = text.replace('\\"', '"')  # a quote escaped in a string literal
    lines = [re.sub(r"^\s*(?:#+|//)?\s?", "", line) for line in text.split("\n")]
    return " ".join(lines)


CITATION = re.compile(
    r"(?P<doc>(?:docs/)?[A-Za-z][\w-]*\.md)(?:#(?P<anchor>[\w-]+))?"
    r"(?P<quotes>(?:(?:,\s*|\s*\(\s*|,?\s+and\s+)(?:\"[^\"]{2,200}\"|'[^']{2,200}'))*)")
QUOTED = re.compile(r"\"([^\"]+)\"|'([^']+)'")


def resolve(name: str, where: Path) -> Path | None:
    for base in ([ROOT] if name.startswith("docs/") else [where.parent, ROOT, ROOT / "docs"]):
        if (base / name).is_file():
            return (base / name).resolve()
    return None


def citations() -> list[tuple[Path, Path | None, str, str | None, list[str]]]:
    """(citing file, cited document, its name as written, anchor, quoted headings) for every citation that names
    a heading."""
    found = []
    for path in scanned_files():
        for m in CITATION.finditer(joined(path)):
            quotes = [a or b for a, b in QUOTED.findall(m.group("quotes"))]
            if quotes or m.group("anchor"):
                found.append((path, resolve(m.group("doc"), path), m.group("doc"), m.group("anchor"), quotes))
    return found


def test_citations_name_headings_that_exist():
    cites = citations()
    assert len(cites) >= 20, "the citation scanner found almost nothing: is the pattern broken?"
    problems = []
    for path, doc, name, anchor, quotes in cites:
        where = path.relative_to(ROOT)
        if doc is None:
            problems.append(f"{where}: cites {name}, which does not exist")
            continue
        problems += [f"{where}: {name}, {q!r} is not a heading of {doc.relative_to(ROOT)}"
                     for q in quotes if not names(doc, q)]
        if anchor and anchor not in {slug(h) for h in headings(doc)}:
            problems.append(f"{where}: {name}#{anchor} is not an anchor of {doc.relative_to(ROOT)}")
    assert not problems, "\n".join(problems)


def test_the_retired_benchmarks_log_is_gone_and_nothing_cites_it():
    assert not (ROOT / "docs" / RETIRED).exists()
    stale = [f"{p.relative_to(ROOT)}:{n}" for p in scanned_files()
             for n, line in enumerate(p.read_text().split("\n"), 1) if RETIRED in line]
    assert not stale, "cite docs/LOG.md or docs/RESULTS.md by heading instead: " + ", ".join(stale)


@pytest.mark.parametrize("doc", ["docs/LOG.md", "docs/RESULTS.md", "docs/STAGES.md", "README.md"])
def test_headings_are_unique(doc):
    heads = headings(ROOT / doc)
    assert heads, doc
    repeated = sorted({h for h in heads if heads.count(h) > 1})
    assert not repeated, f"{doc}: headings repeated: {repeated}"


def test_the_log_is_dated_newest_first():
    dates = [h for h in headings(ROOT / "docs/LOG.md") if re.fullmatch(r"\d{4}-\d{2}-\d{2}", h)]
    assert dates and dates == sorted(dates, reverse=True), dates


def test_results_has_a_section_per_stage():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = sorted(set(stages) - set(headings(ROOT / "docs/RESULTS.md")))
    assert not missing, f"docs/RESULTS.md has no section for {missing}"


def test_relative_links_resolve():
    problems = []
    for doc in markdown_docs():
        for target in re.findall(r"\]\(([^)\s]+)\)", strip_fences(doc.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file).resolve() if file else doc
            if not dest.exists():
                problems.append(f"{doc.relative_to(ROOT)}: link to {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in {slug(h) for h in headings(dest)}:
                problems.append(f"{doc.relative_to(ROOT)}: link to {target}: no such heading")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- the README's examples


def code_blocks(doc: Path, languages: set[str]) -> list[str]:
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", doc.read_text(), flags=re.DOTALL | re.MULTILINE)
            if m.group(1) in languages]


def python_snippets() -> list[tuple[str, str]]:
    out = []
    for doc in REFERENCE_DOCS:
        for i, code in enumerate(code_blocks(doc, {"python"})):
            out.append((f"{doc.relative_to(ROOT)}[{i}]", code))
    return out


def run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def test_the_readme_has_python_examples():
    assert any(name.startswith("README.md") for name, _ in python_snippets())


@pytest.mark.parametrize("name,code", python_snippets(), ids=[n for n, _ in python_snippets()])
def test_python_snippets_run_as_written(name, code, tmp_path):
    """README snippets run on what a clone holds (models/base is committed); a snippet of docs/ that reads a
    pipeline output runs where `dvc repro` has made it."""
    paths = re.findall(r"[\"']((?:data|models|metrics|plots)/[^\"']+)[\"']", code)
    needed = [p for p in paths if not (ROOT / p).exists()]
    if needed:
        assert not name.startswith("README.md"), f"{name} reads {needed}, which a clone does not have"
        pytest.skip(f"needs pipeline outputs {needed}")
    script = tmp_path / "snippet.py"
    script.write_text(code)
    proc = run([sys.executable, str(script)])
    assert proc.returncode == 0, f"{name} failed:\n{code}\n{proc.stderr[-3000:]}"


def shell_commands() -> list[tuple[str, str]]:
    """Every command line of the reference docs' shell blocks, comments dropped, continuation lines joined."""
    out = []
    for doc in REFERENCE_DOCS:
        for code in code_blocks(doc, {"", "bash", "sh", "console"}):
            for line in code.replace("\\\n", " ").split("\n"):
                for cmd in line.split("&&"):
                    cmd = re.split(r"\s#\s", cmd)[0].strip()
                    if cmd:
                        out.append((str(doc.relative_to(ROOT)), cmd))
    return out


@cache
def help_text(args: tuple[str, ...]) -> str:
    proc = run([*args, "--help"])
    assert proc.returncode == 0, f"{' '.join(args)} --help failed: {proc.stderr[-2000:]}"
    return proc.stdout


def test_knobctl_examples_run():
    """`knobctl SUBCOMMAND ...`: the subcommand and its options exist; `knobctl show PATH` runs where PATH does."""
    seen = 0
    for doc, cmd in shell_commands():
        words = shlex.split(cmd)
        if words[:3] == ["python", "-m", "knobctl"]:
            words = ["knobctl", *words[3:]]
        if not words or words[0] != "knobctl":
            continue
        seen += 1
        sub = words[1]
        text = help_text((sys.executable, "-m", "knobctl", sub))
        for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
            assert flag in text, f"{doc}: `{cmd}`: knobctl {sub} has no {flag}"
        paths = [w for w in words[2:] if "/" in w or w.endswith(".parquet")]
        if sub == "show" and paths and all((ROOT / p).exists() for p in paths):
            proc = run([sys.executable, "-m", "knobctl", *words[1:]])
            assert proc.returncode == 0, f"{doc}: `{cmd}` failed: {proc.stderr[-2000:]}"
    assert seen, "the README shows no knobctl command"


def test_stage_and_benchmark_examples_name_what_exists():
    """`python stages/X.py --flag`: the script and its flags exist (`--help` answers without torch);
    `python benchmarks/X.py` and `bash benchmarks/X.sh`: the script exists."""
    for doc, cmd in shell_commands():
        words = shlex.split(cmd)
        scripts = [w for w in words if re.fullmatch(r"(stages|benchmarks)/[\w.-]+\.(py|sh|yaml)", w)]
        for script in scripts:
            assert (ROOT / script).is_file(), f"{doc}: `{cmd}`: no {script}"
        if len(words) > 1 and words[0] == "python" and words[1].startswith("stages/"):
            text = help_text((sys.executable, str(ROOT / words[1])))
            for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
                assert flag in text, f"{doc}: `{cmd}`: {words[1]} has no {flag}"


def test_dvc_exp_examples_set_params_that_exist():
    """Every `-S key=value` of `dvc exp run` names a key of params.yaml."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    seen = 0
    for doc, cmd in shell_commands():
        words = shlex.split(cmd)
        for flag, value in itertools.pairwise(words):
            if flag != "-S":
                continue
            seen += 1
            node = params
            key = value.split("=")[0]
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{doc}: `{cmd}`: params.yaml has no {key}"
                node = node[part]
    assert seen
