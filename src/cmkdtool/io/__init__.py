"""File formats: Parquet feature tables, safetensors checkpoints, atomic writes."""
