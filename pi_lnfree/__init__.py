"""pi-lnfree: LayerNorm-free and ReLU decoders, their entropy, and their private-inference cost."""

__version__ = "0.1.0"
