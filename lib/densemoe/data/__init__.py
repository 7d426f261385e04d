"""Datasets (SynthScenes, PASCAL-Context MT, NYUD-v2 MT), download, and the official transforms."""
