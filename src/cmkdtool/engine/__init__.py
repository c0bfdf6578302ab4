"""The shared training core: one loop for pretraining and every distillation method."""
