"""During training: fit diagnosis and early stopping that keeps the best weights."""

__all__: list[str] = []
