"""Stage 2, subject folder -> trained model: one renderer-agnostic trainer, checkpoints, samplers."""
