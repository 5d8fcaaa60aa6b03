"""LoRA Forge engine: model loading, LoRA layers, training, storage and export. Knows nothing of any UI."""
