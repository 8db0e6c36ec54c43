"""lightning_mlcycle's Optuna sweeper for Hydra (``hydra/sweeper=mlcycle_optuna``).

``hydra_plugins`` itself stays a namespace package (no ``__init__.py``), so Hydra finds this
plugin next to the other installed ones.
"""
