"""Evaluation under DreamBench's protocol: DINO, CLIP-I, CLIP-T."""
