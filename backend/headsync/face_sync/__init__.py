"""Lip sync: mouth crops, the sync discriminator, the audio-visual encoder and the sync judge."""
