"""The results page's generated sections, in three layers (``scripts/results_report.py`` is the CLI).

- `data`: what the sections read: the service's REST API (through `liftplace.client`), the CSVs of
  ``bench/convergence.py``, and the real-vs-real FIDs of the digits;
- `compute` and `curves`: pure arithmetic on that data, returning dataclasses (the grid's Welch
  t-tests, the verdict, the comparisons with another study or an earlier run, the curves' summaries);
- `render` and `figures`: Markdown tables and PNG plots of those dataclasses;
- `page`: the results page's marked sections and their JSON sidecars (the numbers of each section,
  which ``--previous`` reads back at an earlier commit); `sections` puts the layers together.

No module here imports torch at import time (`data.real_vs_real` loads it when called).
"""
