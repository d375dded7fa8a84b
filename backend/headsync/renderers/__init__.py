"""Stage 3's models: the renderer protocol, its registry, shared parts (common/) and one folder per renderer."""
