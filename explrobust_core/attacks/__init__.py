"""Attacks on predictions (classification.py) and on explanations (explanation.py)."""
