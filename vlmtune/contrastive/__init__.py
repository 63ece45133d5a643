"""Dual encoders trained contrastively (CLIP / SigLIP): the start of the road, a tower that knows what is where."""
