"""itm: image-text matching with cross-attention matchers (BSSAN, CAAN, MLASM)."""

__version__ = "0.1.0"
