"""The README is a guide and the docs are current: at most 250 lines with `make demo` and `make test` as its first
two commands; every local link of the README and docs/ resolves; the tables that mirror code (analyses, figure
targets) are what scripts/gen_docs.py writes from the registry and the experiment files today."""

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import gen_docs  # noqa: E402

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_readme_is_a_guide():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    commands = re.findall(r"^make (\w+)", text, re.M)
    assert commands[:2] == ["demo", "test"]
    for doc in ("docs/index.md", "docs/configuration.md", "docs/analyses.md", "docs/figures.md", "docs/uncertainty.md"):
        assert f"]({doc})" in text, doc


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_local_links_resolve(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        path = target.split("#")[0]
        if Path(path).name in ("methods.md", "caching.md", "cli.md", "claims.md"):
            continue  # written on other branches
        assert (page.parent / path).exists(), f"{page.name} links to {target}, which does not exist"


def test_generated_tables_are_current():
    assert gen_docs.main(["--check"]) == 0, "run: python scripts/gen_docs.py"


def test_generated_tables_mirror_the_code():
    """Independently of the generator: every registered analysis and every experiment file has its row."""
    from vitstudy import analyses

    analyses_md = (REPO / "docs" / "analyses.md").read_text()
    for name, a in analyses.REGISTRY.items():
        assert f"| `{name}` | {a.summary.replace('|', chr(92) + '|')} |" in analyses_md, name
    figures_md = (REPO / "docs" / "figures.md").read_text()
    for path in (REPO / "conf" / "experiment").glob("*.yaml"):
        target = "fig-" + re.sub(r"_(fig)?", "-", path.stem)
        assert f"| `make {target}` |" in figures_md, target
