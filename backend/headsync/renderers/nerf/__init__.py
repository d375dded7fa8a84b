"""SyncTalk's tri-plane hash NeRF, registered as the ``nerf`` renderer (:class:`.model.TalkingHead`)."""

from . import model  # noqa: F401  (registers the renderer)
