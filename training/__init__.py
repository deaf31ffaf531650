"""Training: fine-tuning any adapter that implements the training contract (adapters/base.py)."""
