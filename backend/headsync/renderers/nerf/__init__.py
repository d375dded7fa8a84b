"""SyncTalk's tri-plane hash NeRF (the ``nerf`` renderer)."""
