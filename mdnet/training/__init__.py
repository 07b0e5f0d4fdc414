"""Every job that produces weights or measures them.

One module per job, each with ``main(argv, prog)`` behind an ``mdnet`` command: ``pretrain_prior``
(``mdnet pretrain-prior``), ``train`` (``mdnet train``), ``baseline`` (``mdnet baseline``),
``evaluate`` (``mdnet evaluate``), ``model_card`` (``mdnet model-card``); ``metrics`` holds PC /
MAE / RMSE, overall and per SCUT-FBP5500 subgroup; ``distributed`` is the data-parallel pattern
(Accelerate) that every training job follows. The job modules import the heavy libraries
(diffusers, accelerate), so this package imports them only when asked for.
"""

from mdnet.training.metrics import format_table, report

__all__ = ["format_table", "report"]
