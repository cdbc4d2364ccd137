"""docs/methods.md is the project's own account of the methods: every `docs/methods.md#<anchor>` the repository cites
is a heading there, every analysis has its section, and no file points at a document the repository lacks."""

import re
import subprocess
from pathlib import Path

import pytest

from vitstudy.analyses import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
METHODS = ROOT / "docs" / "methods.md"
GONE = "SCIENCE" + ".md"  # a notes file outside the repository that the code used to cite
# README.md still cites it until the lead applies this branch's README change (README is being moved into docs/)
PENDING: set[str] = set()


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation other than - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *#*$", text, re.M)}


def repo_files() -> list[Path]:
    """Tracked files and new files git does not ignore (no .venv, outputs, build folders)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"git ls-files failed: {err}")
    if out.returncode != 0:
        pytest.skip(f"not a git checkout: {out.stderr.strip()}")
    return [ROOT / p for p in out.stdout.splitlines() if (ROOT / p).is_file()]


def texts() -> dict[str, str]:
    found = {}
    for path in repo_files():
        try:
            found[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):  # images, pickles, weights
            continue
    return found


def test_slug_matches_githubs_rule():
    assert slug("CKA estimator") == "cka-estimator" and slug("cka_within") == "cka_within"
    assert slug("Models and training") == "models-and-training" and slug("Fig. 7 (left)") == "fig-7-left"


def test_every_cited_methods_anchor_is_a_heading():
    heads = anchors(METHODS.read_text(encoding="utf-8"))
    cited = {}
    for name, text in texts().items():
        for anchor in re.findall(r"docs/methods\.md#([\w\-]+)", text):
            cited.setdefault(anchor, []).append(name)
    # links inside methods.md itself
    for anchor in re.findall(r"\]\(#([\w\-]+)\)", METHODS.read_text(encoding="utf-8")):
        cited.setdefault(anchor, []).append("docs/methods.md")
    assert len(cited) >= 5, cited  # the modules that cite it: metrics.cka, metrics.fourier, zoo, train
    missing = {a: files for a, files in cited.items() if a not in heads}
    assert not missing, f"anchors cited but not headings of docs/methods.md: {missing}"


def test_every_analysis_has_a_section():
    heads = anchors(METHODS.read_text(encoding="utf-8"))
    assert len(REGISTRY) >= 19
    assert sorted(set(REGISTRY) - heads) == []


def test_no_file_cites_the_missing_notes_file():
    found = texts()
    assert "vitstudy/metrics/cka.py" in found and "docs/methods.md" in found
    citing = sorted(name for name, text in found.items() if GONE in text and name not in PENDING)
    assert citing == [], f"{GONE} is not part of the repository; cite docs/methods.md#<anchor> instead: {citing}"
