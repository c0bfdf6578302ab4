"""Models: encoders, heads, late fusion; rebuilt from a JSON spec stored in checkpoints."""
