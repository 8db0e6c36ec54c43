"""After training: pruning, low rank, compact convolutions, quantization, binarization, distillation."""

__all__: list[str] = []
