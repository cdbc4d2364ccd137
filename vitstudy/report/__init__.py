"""The report `vitstudy collect` writes: which paper figure each run reproduces (experiments), the jobs found and
what varies between them (runs), the page's sections (sections), a run's settings and uncertainty (settings),
readable figure grids for homogeneous sweeps (grid), and the HTML page with its figures beside it (page)."""
