"""itm: image-text matching with cross-attention matchers (BSSAN, CAAN, MLASM).

The public API (``load_model``, ``build_index``, ``open_index``, ``Model``) lives in :mod:`itm.api`
and is imported on first use, so ``import itm`` and the CLI's start stay light.
"""

__version__ = "0.1.0"

_API = ("Model", "load_model", "build_index", "open_index")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from itm import api

        return getattr(api, name)
    raise AttributeError(f"module 'itm' has no attribute {name!r}")
