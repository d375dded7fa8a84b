"""After rendering: compositing the rendered head back into the full-resolution plate (Portrait-Sync)."""
