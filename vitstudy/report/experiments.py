"""Which paper figure a run reproduces: the header of its `conf/experiment/<name>.yaml`.

Every experiment file opens with a paragraph `# <Paper> <year>, Fig. N: what is measured ...`, then
`# Paper finds: <one sentence of what the paper shows there>`, then the command (`#   vitstudy run ...`). The
header is the single source: `vitstudy list` prints its first line and the report parses the rest. (Comments
rather than YAML keys: an experiment is a `_global_` package, and a key there would be a config key of every run.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

PAPER_ORDER = ("raghu", "vit", "parkkim")  # the order of the Makefile: Raghu et al., Dosovitskiy et al., Park & Kim
_COMMAND = re.compile(r"#\s{2,}\S")  # an indented comment line: a command example
_TAG = re.compile(r"# (Needs|Cost|Outputs|Paper finds):")


@dataclass(frozen=True)
class Experiment:
    name: str  # raghu_fig1
    paper: str  # Raghu et al. 2021
    figure: str  # Fig. 1
    measures: str  # the first paragraph after "Fig. N:": what the run measures, with its caveats
    finds: str  # one sentence: what the paper shows in that figure

    @property
    def target(self) -> str:
        """The Makefile target that runs it: raghu_fig1 -> fig-raghu-1, parkkim_lesion -> fig-parkkim-lesion."""
        return target_name(self.name)

    @property
    def title(self) -> str:
        return f"{self.paper}, {self.figure}"


def target_name(experiment: str) -> str:
    return "fig-" + re.sub(r"_(fig)?", "-", experiment)


def sort_key(experiment: str) -> tuple:
    """Papers in the Makefile's order, then figures in natural order (fig2 before fig10)."""
    paper, _, rest = experiment.partition("_")
    rank = PAPER_ORDER.index(paper) if paper in PAPER_ORDER else len(PAPER_ORDER)
    return (rank, paper, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", rest)])


def parse_header(name: str, text: str) -> Experiment | None:
    """The experiment's header comment, or None when it does not open with `<paper> <year>, Fig...: ...`."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if "@package" not in line:
            lines.append(line)
    if not lines:
        return None
    head = re.match(r"#\s*(?P<paper>.*?\b(19|20)\d\d)\b,?\s*(?P<figure>[^:]+?):\s*(?P<rest>.*)", lines[0])
    if head is None:
        return None
    para, finds, state = [head["rest"]], [], "para"
    for line in lines[1:]:
        if line.startswith("# Paper finds:"):
            state = "finds"
            finds.append(line[len("# Paper finds:") :])
        elif _COMMAND.match(line) or _TAG.match(line):
            if state == "finds":
                break
            state = "after"  # the first paragraph ended; the finding may still follow
        elif state in ("para", "finds"):
            (para if state == "para" else finds).append(line[1:])
    measures = _tidy(" ".join(para))
    measures = re.sub(r":$", ".", measures)  # the paragraph's last sentence may lead into the command
    return Experiment(name, head["paper"].strip(), head["figure"].strip(), measures, _tidy(" ".join(finds)))


def _tidy(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@lru_cache(maxsize=1)
def experiments() -> dict[str, Experiment]:
    """Every experiment preset shipped in vitstudy/conf/experiment with a paper-figure header."""
    folder = resources.files("vitstudy.conf") / "experiment"
    out = {}
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.endswith(".yaml"):
                exp = parse_header(entry.name[:-5], entry.read_text())
                if exp is not None:
                    out[exp.name] = exp
    return dict(sorted(out.items(), key=lambda kv: sort_key(kv[0])))


def experiment_of(overrides) -> str | None:
    """The `experiment=NAME` among a job's overrides (run.json, failed.json or .hydra/overrides.yaml)."""
    for o in overrides or []:
        key, _, value = str(o).lstrip("+~").partition("=")
        if key == "experiment" and value:
            return value
    return None
