"""The analysis stage: what the cells are and how they sit together.

- :mod:`.config` — the stage's settings (``analysis:`` in a run config)
- :mod:`.phenotype` — gating and clustering into phenotypes
- :mod:`.classify` — an object classifier trained on QuPath annotations, applied to a run
- :mod:`.spatial` — spatial graph statistics (squidpy) and tumour–immune metrics
- :mod:`.analyze` — ``slidecell analyze``: all of the above on an AnnData
- :mod:`.report` — ``slidecell report``: one HTML page from an analysis
- :mod:`.cohort` — many runs side by side
"""
