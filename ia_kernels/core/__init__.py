"""Pieces the op front-ends share: validation (checks), group layouts (groups), the chunk driver
over LM-head logits (chunks), and the numeric constants and rules every backend follows (numerics)."""
