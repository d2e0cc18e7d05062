"""Training and evaluating the embedded default model (train_base, eval_base)."""
