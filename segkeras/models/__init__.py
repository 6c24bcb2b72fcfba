"""Builders for the lecture's architectures; each returns a named ``keras.Model`` with logits out."""
