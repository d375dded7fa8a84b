"""Measuring a trained model: held-out image metrics, landmark error, lip sync."""
