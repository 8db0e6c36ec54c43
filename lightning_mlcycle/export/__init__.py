"""After training: exporters, parity checks, latency report, model card and Predictor."""

__all__: list[str] = []
