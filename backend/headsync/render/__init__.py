"""Rendering new dialogue with a trained subject, and the folders renders go into."""
