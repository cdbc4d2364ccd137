"""docs/claims.md's list of claims, generated from the declarations (`python -m vitstudy.claims > docs/claims.md`;
tests/test_claims.py fails when the file is stale)."""

from __future__ import annotations

from ..report.experiments import experiments, sort_key
from . import CLAIMS, TOUR

GUIDE = """# Claims: the papers' findings as checks

Every figure target (`conf/experiment/*.yaml`) and the tour state what the paper found as one or more *claims*.
A claim is a statistic computed from a run's tables, a threshold and a side; `vitstudy collect` (and so every
figure target's `make` rule, `vitstudy tour` and `vitstudy demo`) evaluates it into a row of `findings.csv`:

    paper, figure, claim, statistic, value, ci_low, ci_high, threshold, verdict, models, runs, method, note, target

- **verdict** `holds`: the 95% interval lies on the claimed side of the threshold; `contradicted`: on the other
  side; `inconclusive`: it contains the threshold, or the table carries no interval; `missing`: an input run, table
  or row is absent, and `note` says which (a claim is never dropped silently).
- **interval** (`method`), from the runs' own uncertainty, never from the claim's code:
  - tables with jackknife replicates (`<table>.replicates.npz`: CKA, attention distance, spatial localization):
    the statistic is recomputed on every leave-one-batch-out replicate and jackknifed (t interval, batches - 1
    degrees of freedom). Two runs on the same batches of the same images are *paired* (batch b deleted from both,
    so what the images share cancels, as `vitstudy compare`); runs on different images add their variances.
  - tables with a standard-error column only (`<value>_se`: skip ratios, Fourier, feature variance, probes):
    se <= sum_i |d statistic / d v_i| se_i, a bound that holds whatever the rows' correlation (they share images),
    so the interval is conservative (normal quantile).
  - tables whose rows are independent samples (per image, per mini-batch; `Need(independent_rows=True)`): the
    delta-method standard error with the rows' sample standard deviation.
  - tables of weights only (position embeddings): exact, a zero-width interval.
- **note** also carries a claim's caveat: findings that depend on model scale or training data say so (Raghu et
  al. Figs 4, 5, 7: with less data ViTs learn fewer local heads in lower layers; the bundled CIFAR-10 ViT is such a
  model, so its near-uniform attention is the paper's finding, not a failure).

## How to add a claim

Claims live in `vitstudy/claims/`, one module per paper (`raghu.py`, `dosovitskiy.py`, `parkkim.py`), each a
dict `CLAIMS[target] = [Claim, ...]` (`measures.py` repeats Raghu's Fig. 1-2 statistics once per registered
similarity measure, on the runs of that measure: `Need(..., config=(("analysis.measure", name),))`); the tour's list is `TOUR` in `vitstudy/claims/__init__.py`. A claim:

```python
FIG9 = Claim(
    paper="Raghu et al. 2021",
    figure="Fig. 9",
    text="Final-block ViT tokens are most similar to their own input patch",
    statistic="mean CKA of a token with its own patch minus with the other positions",  # in words
    needs={"vit": Need("spatial_localization", "vit")},  # role -> analysis and model kind ('vit' / 'cnn')
    compute=lambda t: mean(t, "vit", "is_self") - mean(t, "vit", "~is_self"),  # the statistic
    threshold=0.0,
    direction=">",
)
```

The statistic reads values only through `t.values(role, query)` (helpers in `claims/stats.py`: `mean`, `far_cka`,
`step_change`, `of_kind`), where `query` is a pandas expression or a function of the table; that is what lets the
interval follow the value. A role finds its run among the collected jobs by analysis and by the model's kind
(`Need(analysis, kind, table=...)`, `column=` on the claim when the value is not the replicates' column; a claim's
fields are keyword-only). Add a known-answer test to `tests/test_claims.py` (hand-written tables where the claim
must hold, be contradicted and be inconclusive), then regenerate this file: `python -m vitstudy.claims > docs/claims.md`.

Why Python rather than a declarative spec: a statistic selects rows, groups them by depth and compares two runs;
a short function says that plainly and stays testable, and `core.estimate` recomputes it on the replicates
without the claim knowing."""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table() -> str:
    """One row per claim of every figure target, in the papers' order."""
    exps = experiments()
    rows = [
        "| target | paper, figure | the paper finds | statistic | holds when | inputs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for target in sorted(CLAIMS, key=sort_key):
        for c in CLAIMS[target]:
            inputs = "; ".join(
                f"{role}: {n.describe()}" + (f" (`{n.table}`)" if n.table else "") for role, n in c.needs.items()
            )
            rows.append(
                f"| `{target}` | {_cell(c.paper)}, {_cell(c.figure)} | {_cell(c.text)} | {_cell(c.statistic)} | "
                f"`{c.direction} {c.threshold:g}` | {_cell(inputs)} |"
            )
    missing = [t for t in exps if t not in CLAIMS]
    if missing:
        rows.append("\nTargets without a claim yet: " + ", ".join(f"`{t}`" for t in missing) + ".")
    return "\n".join(rows)


def tour_table() -> str:
    rows = ["| # | paper, figure | claim | target |", "| --- | --- | --- | --- |"]
    rows += [
        f"| {i + 1} | {_cell(c.paper)}, {_cell(c.figure)} | {_cell(c.text)} | `{t}` |" for i, (t, c) in enumerate(TOUR)
    ]
    return "\n".join(rows)


def markdown() -> str:
    return (
        GUIDE
        + "\n\n## Every claim, per figure target\n\n"
        + table()
        + "\n\n## The tour's claims (on the bundled CIFAR-10 ViT and ResNet)\n\n"
        + tour_table()
        + "\n"
    )
