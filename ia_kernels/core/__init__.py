"""Pieces the op front-ends share: validation (checks), group layouts (groups), the chunk driver
over LM-head logits (chunks), the numeric constants and rules every backend follows (numerics),
the KL estimators as tensor maths (kl), and the vocabulary-parallel statistics (vocab_parallel)."""
