"""MAPE-Unlearn: module-aware parameter-efficient machine unlearning on Transformers."""

__version__ = "0.1.0"
