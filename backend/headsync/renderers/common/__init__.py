"""Parts renderers share: tri-plane and hash-grid encoders, conditioning, the expression basis, cameras,
losses."""
