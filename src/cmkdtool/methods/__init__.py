"""Training methods: supervised pretraining and (registered by name) the distillation methods."""
