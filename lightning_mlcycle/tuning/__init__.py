"""During training: Optuna pruning callback and the throughput tuner."""

__all__: list[str] = []
