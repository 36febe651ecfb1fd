"""Self-distillation: scoring, selection, rounds."""
