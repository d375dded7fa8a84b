"""The subject folder: its artifacts, the label map, the train/held-out split, the training data read from it."""
