"""Parts renderers share: tri-plane and hash-grid encoders, conditioning, cameras, losses."""
