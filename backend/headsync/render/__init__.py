"""Stage 4, trained model + new audio (+ edited curves) -> frames, video, curves.json, and the folders
renders go into."""
