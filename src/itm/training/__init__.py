"""Training: the loop (``loop.train``) and atomic, resumable checkpoints (``checkpoint``)."""
