"""SyncTalk++'s Dynamic Portrait Renderer: tri-plane Gaussian head, tile rasterizer, densification;
registered as the ``gaussian`` renderer (:class:`.model.GaussianHead`)."""

from . import model  # noqa: F401  (registers the renderer)
