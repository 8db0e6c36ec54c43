"""The package's one exception type."""

from __future__ import annotations


class MLCycleError(ValueError):
    """Raised for bad input to any part of lightning_mlcycle.

    It subclasses :class:`ValueError`, so ``except ValueError`` keeps working. The message always
    names the argument, config key or path at fault and what is allowed.

    Example:
        >>> try:
        ...     raise MLCycleError("`data.batch_size` must be positive, but got -1.")
        ... except ValueError as err:
        ...     print(err)
        `data.batch_size` must be positive, but got -1.
    """
