"""The torch backend: vectorised PyTorch, every op, every device and dtype (float64 included)."""
