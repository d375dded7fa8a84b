"""The torso path: what the rendered head is laid over, shared by every renderer.

* :mod:`.bands` - the face mask, its expansion (px at 512, scaled to the crop) and the bands measured;
* :mod:`.restorer` - SyncTalk++'s Torso-Inpainting Restorer (Sec. III-F, Eq. 28-29), a small U-Net;
* :mod:`.field` - ER-NeRF's torso field with Adaptive Pose Encoding (Sec. 3.4);
* :mod:`.config` - the ``[torso]`` preset table (which path, and each part's training settings);
* :mod:`.path` - the render-time torso path: the torso layer under the head and the gap fill;
* :mod:`.weights` - reading the parts' weights files.

Both parts are trained by :mod:`headsync.training.torso` (the ``torso`` job); the composite into the
full-resolution plate stays in :mod:`headsync.post.portrait`.
"""
