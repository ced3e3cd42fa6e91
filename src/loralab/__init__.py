"""loralab: config-driven reproduction of LoRA-family fine-tuning methods."""

__version__ = "0.1.0"
