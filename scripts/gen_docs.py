#!/usr/bin/env python
"""Write the docs' tables that mirror code, between their markers, so they cannot drift from it:

docs/analyses.md  <!-- generated: analyses -->       every registered analysis, its one-line summary and parameters
docs/figures.md   <!-- generated: figure-targets --> every conf/experiment/*.yaml: target, paper figure, analysis,
                                                     what the paper finds (from the file's header)
docs/measures.md  <!-- generated: measures -->       every registered similarity measure: range, forms, symmetry,
                                                     invariances, parameters, citation

python scripts/gen_docs.py            rewrite the blocks in place
python scripts/gen_docs.py --check    exit 1 naming each stale block (tests/test_docs.py runs this)
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import fields
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def analyses_table() -> str:
    from vitstudy import analyses

    rows = [
        "| analysis | what it measures (paper figure) | parameters (`vitstudy list NAME` shows defaults) |",
        "| --- | --- | --- |",
    ]
    for name in sorted(analyses.REGISTRY):
        a = analyses.REGISTRY[name]
        params = ", ".join(f"`{f.name}`" for f in fields(a.params) if f.name != "name") if a.params is not None else ""
        rows.append(f"| `{name}` | {_cell(a.summary)} | {params or '-'} |")
    return "\n".join(rows)


def _analysis_of(text: str) -> str:
    found = re.search(r"override /analysis:\s*(\S+)", text)
    return found.group(1) if found else "?"


def figures_table() -> str:
    from vitstudy.report.experiments import experiments

    rows = ["| target | paper, figure | analysis | what the paper finds |", "| --- | --- | --- | --- |"]
    for name, exp in experiments().items():
        text = (REPO / "conf" / "experiment" / f"{name}.yaml").read_text()
        rows.append(f"| `make {exp.target}` | {_cell(exp.title)} | `{_analysis_of(text)}` | {_cell(exp.finds)} |")
    return "\n".join(rows)


def measures_table() -> str:
    from vitstudy import measures

    rows = [
        "| measure | label | range | forms | symmetric | invariant to | parameters | citation |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, cls in sorted(measures.MEASURES.items()):
        forms = ", ".join(f for f, has in (("minibatch", cls.streams), ("full set", cls.full_set)) if has)
        inv = ", ".join(cls.invariances) or "-"
        if cls.invariances_y is not None:
            inv = f"x: {inv}; y: {', '.join(cls.invariances_y) or '-'}"
        params = ", ".join(f"`{k}={v}`" for k, v in cls.parameters().items()) or "-"
        rows.append(
            f"| `{name}` | {_cell(cls.label)} | [{cls.range[0]:g}, {cls.range[1]:g}] | {forms} | "
            f"{'yes' if cls.symmetric else 'no (x predicts y)'} | {inv} | {params} | {_cell(cls.citation)} |"
        )
    return "\n".join(rows)


BLOCKS = {
    "analyses": (REPO / "docs" / "analyses.md", analyses_table),
    "figure-targets": (REPO / "docs" / "figures.md", figures_table),
    "measures": (REPO / "docs" / "measures.md", measures_table),
}


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with the lines between `<!-- generated: NAME -->` and `<!-- end generated: NAME -->` set to `body`."""
    start, end = f"<!-- generated: {name} -->", f"<!-- end generated: {name} -->"
    if start not in text or end not in text:
        raise SystemExit(f"gen_docs: the markers of block '{name}' are missing")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale blocks, change nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, (path, make) in BLOCKS.items():
        old = path.read_text()
        new = replace_block(old, name, make())
        if new != old:
            stale.append(f"{path.relative_to(REPO)} ({name})")
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print("gen_docs: stale, run `python scripts/gen_docs.py`: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
