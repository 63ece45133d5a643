"""Model composition, projectors and checkpoint directories."""
