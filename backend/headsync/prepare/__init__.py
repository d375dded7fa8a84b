"""Stage 1, video + audio -> subject folder: one module per preparation stage, named as the stage is."""
