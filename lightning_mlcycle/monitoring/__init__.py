"""After deployment: reference profile, drift detectors, DriftMonitor and stress test."""

__all__: list[str] = []
