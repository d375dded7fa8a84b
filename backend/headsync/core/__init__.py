"""Shared plumbing every stage uses: errors, progress, presets, devices, atomic writes, media I/O, model weights."""
