"""Checks of the documentation site in docs/ that need neither mkdocs nor a network.

* every relative link and anchor in docs/*.md points to an existing file / heading;
* every page in mkdocs.yml's nav exists, and every snippet include (``--8<-- "path"``) exists;
* every ``astrotl ...`` command quoted in the docs parses with the real CLI parser, names an
  existing sub-command, and every ``tasks/...`` file it names exists;
* the example plugin of docs/writing-a-plugin.md registers, validates its task file and yields
  samples of the documented shape (a slow test also runs it end to end).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLE = DOCS / "examples" / "astrotl-blobs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "examples" not in p.parts)

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
SNIPPET = re.compile(r'^\s*--8<--\s+"([^"]+)"')
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
ATTR_ID = re.compile(r"\{\s*#([\w-]+)[^}]*\}\s*$")


def _slugify(text: str) -> str:
    """Python-Markdown's default toc slug (what mkdocs uses for heading anchors)."""
    text = re.sub(r"`([^`]*)`", r"\1", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _split(page: Path) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Prose lines, and the code blocks as (language, lines)."""
    prose, blocks, current, lang = [], [], None, ""
    for line in page.read_text().splitlines():
        stripped = line.strip()
        if FENCE.match(stripped):
            if current is None:
                current, lang = [], stripped.strip("`~").strip()
            else:
                blocks.append((lang, current))
                current = None
            continue
        (prose if current is None else current).append(line)
    return prose, blocks


def _anchors(page: Path) -> set[str]:
    prose, _ = _split(page)
    out = set()
    for line in prose:
        m = HEADING.match(line)
        if m:
            title = m.group(2)
            attr = ATTR_ID.search(title)
            out.add(attr.group(1) if attr else _slugify(title))
    return out


def _nav_pages() -> list[str]:
    import yaml

    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages: list[str] = []

    def walk(node):
        if isinstance(node, str):
            pages.append(node)
        elif isinstance(node, list):
            for n in node:
                walk(n)
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)

    walk(cfg.get("nav", []))
    return pages


def test_docs_exist():
    names = {p.name for p in PAGES}
    for required in ("index.md", "getting-started.md", "writing-a-plugin.md", "configuration.md",
                     "architecture.md", "simulation.md", "outputs.md"):
        assert required in names, f"docs/{required} is missing"


def test_nav_pages_exist():
    missing = [p for p in _nav_pages() if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml nav names missing pages: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_internal_links_and_anchors(page):
    prose, _ = _split(page)
    text = "\n".join(re.sub(r"`[^`]*`", "", line) for line in prose)  # links inside inline code are not links
    problems = []
    for target in LINK.findall(text) + IMAGE.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{target}: no heading with anchor #{anchor} in {dest.name} "
                            f"(have: {', '.join(sorted(_anchors(dest)))})")
    assert not problems, f"{page.name}: broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_snippets_exist(page):
    missing = []
    for line in page.read_text().splitlines():
        m = SNIPPET.match(line)
        if m and not (DOCS / "examples" / m.group(1)).is_file():
            missing.append(m.group(1))
    assert not missing, f"{page.name}: snippet files missing under docs/examples/: {missing}"


# -- commands ---------------------------------------------------------------------------------


def _commands() -> list[tuple[str, str]]:
    """(page, command line) for every `astrotl ...` in code blocks and inline code."""
    out = []
    for page in PAGES:
        prose, blocks = _split(page)
        for lang, lines in blocks:
            if lang not in ("bash", "sh", "shell", "console", ""):
                continue
            joined = "\n".join(lines).replace("\\\n", " ")
            for line in joined.splitlines():
                line = line.strip().removeprefix("$ ")
                for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
                    if part.startswith("astrotl ") or part == "astrotl":
                        out.append((page.name, part))
        for line in prose:
            for code in re.findall(r"`([^`]+)`", line):
                if code.startswith("astrotl "):
                    out.append((page.name, code))
    return out


COMMANDS = _commands()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_docs_quote_commands():
    assert len(COMMANDS) >= 10, "expected the docs to quote astrotl commands"


@pytest.mark.parametrize("page,command", COMMANDS, ids=[f"{p}:{c}" for p, c in COMMANDS])
def test_quoted_command_is_valid(page, command, capsys):
    from astrotl.cli import _parser, command_modules
    from astrotl.plugins import load_registries

    # every sub-command, astrotl's own and the plugins' (phangs-compare, ...), comes through a hook
    parser = _parser(command_modules(load_registries()))
    subs = _subcommands(parser)
    line = re.sub(r"#.*$", "", command).strip()          # shell comment
    line = re.sub(r"<[^>]*>", "X", line)                 # <placeholder>
    line = re.sub(r"\[(-[^\]]*)\]", r"\1", line)          # usage notation: [--option value]
    line = re.sub(r"\s\|\s.*$", "", line)                  # usage notation: a | b (first choice)
    argv = shlex.split(line)[1:]
    positional = [a for a in argv if not a.startswith("-")]
    if "--disable-plugin" in argv:                        # its value is not a sub-command
        i = argv.index("--disable-plugin")
        positional = [a for a in argv[:i] + argv[i + 2:] if not a.startswith("-")]
    if not positional:
        return  # e.g. `astrotl --help` or an option quoted on its own
    assert positional[0] in subs, f"{page}: `{command}` uses unknown sub-command {positional[0]!r}; have {sorted(subs)}"
    if argv == positional[:1]:
        return  # the sub-command named in prose (`astrotl run`), not a complete command line
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        err = capsys.readouterr().err
        assert exc.code == 0, f"{page}: `{command}` does not parse: {err.strip().splitlines()[-1] if err else exc}"
    for arg in argv:
        if arg.startswith("tasks/"):
            assert (ROOT / arg).is_file(), f"{page}: `{command}` names {arg}, which does not exist"


def test_quoted_list_kinds_and_schema_names_exist():
    from astrotl.plugins import KINDS, load_registries

    regs = load_registries()
    known = {n for k in KINDS for n in regs.of(k)} | {"run", "trainer", "optim"}
    bad = []
    for page, command in COMMANDS:
        argv = shlex.split(re.sub(r"#.*$", "", command))
        if len(argv) >= 3 and argv[1] == "list" and argv[2] not in (*KINDS, "plugins", "all"):
            bad.append((page, command))
        if len(argv) >= 3 and argv[1] == "schema" and "<" not in argv[2]:
            name = argv[2]
            if name not in known and name != "blobs_sim":  # blobs_sim: the example plugin, see below
                bad.append((page, command))
    assert not bad, f"commands naming unknown kinds/components: {bad}"


# -- the example plugin of writing-a-plugin.md -------------------------------------------------


@pytest.fixture()
def blobs_registries(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    for mod in [m for m in sys.modules if m.startswith("astrotl_blobs")]:
        monkeypatch.delitem(sys.modules, mod)
    import astrotl_blobs

    from astrotl.plugins import load_registries

    return load_registries(extra_plugins=[("blobs", astrotl_blobs)])


def test_example_plugin_has_entry_point():
    import tomllib

    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["astrotl.plugins"] == {"blobs": "astrotl_blobs"}


def test_example_plugin_registers_and_validates(blobs_registries, tmp_path):
    from astrotl.config import load_config

    regs = blobs_registries
    assert "blob_shape" in regs.tasks and "blobs_sim" in regs.datasets
    assert regs.tasks.plugin_of("blob_shape") == "blobs"
    cfg = load_config(EXAMPLE / "blobs.yaml", regs, ["data.n_train=8", "data.n_val=4", "data.n_test=4"])
    ds_cls, ds_cfg = cfg.component("data")
    ds = ds_cls(ds_cfg, split="train", seed=0, cache_dir=tmp_path)
    sample = ds[0]
    assert sample["image"].shape == (2, ds_cfg.size, ds_cfg.size)
    assert sample["image"].dtype.is_floating_point and sample["label"] in (0, 1) and sample["index"] == 0
    assert len(ds.catalog()) == len(ds) == 8
    from astrotl.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'noise'"):
        load_config(EXAMPLE / "blobs.yaml", regs, ["data.nosie=0.2"])


@pytest.mark.slow
def test_example_plugin_runs_end_to_end(blobs_registries, tmp_path, monkeypatch):
    import json

    from astrotl.config import load_config
    from astrotl.engine import run

    monkeypatch.setenv("ASTROTL_CACHE_DIR", str(tmp_path / "cache"))
    cfg = load_config(EXAMPLE / "blobs.yaml", blobs_registries,
                      ["trainer.max_epochs=1", "data.n_train=64", "data.n_val=32", "data.n_test=32",
                       f"output_dir={tmp_path / 'runs'}", "data.size=16"])
    run_dir = run(cfg, blobs_registries, overwrite=True).path
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["chance_accuracy"] == 0.5
    assert (run_dir / "tables" / "per_class.ecsv").is_file()
