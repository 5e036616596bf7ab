"""Datasets (Karpathy JSON + images, SCAN precomp), captions, vocabulary and word vectors."""
