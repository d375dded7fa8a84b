"""SyncTalk++'s Dynamic Portrait Renderer: tri-plane Gaussian head, tile rasterizer, densification."""
