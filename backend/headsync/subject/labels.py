"""The label map's values (``masks/NNNNNN.png``, DESIGN.md): one definition for the stage that writes
it (:mod:`headsync.prepare.masks`) and everything that reads it (training data, Portrait-Sync)."""

BACKGROUND, FACE, LIPS, EYES_BROWS, HEAD, NECK, TORSO = range(7)
#: Names of the values above, in order (the masks stage reports each one's share of the pixels).
LABEL_NAMES = ("background", "face", "lips", "eyes_brows", "head", "neck", "torso")
#: What the head renderer draws: face skin, lips + mouth, eyes + brows, hair / rest of the head.
HEAD_LABELS = (FACE, LIPS, EYES_BROWS, HEAD)
