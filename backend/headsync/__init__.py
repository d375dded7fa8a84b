"""HeadSync backend: audio-driven talking heads (SyncTalk / SyncTalk++ / ER-NeRF) for Blender.

A reader follows the seven expression coefficients by module name:
``expression`` (capture) -> ``curves`` (curves.json) -> the add-on's F-curves -> render conditioning.
"""

__version__ = "0.1.0"
