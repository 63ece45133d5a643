"""Training: what trains (policy) and how (TRL SFTTrainer)."""
