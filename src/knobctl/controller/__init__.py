"""The two-stage controller: policy, cache tables, reward and losses, training, evaluation, the in-model flow."""
