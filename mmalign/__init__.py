"""mmalign: align LLaVA-style multimodal LLMs with human and AI feedback."""

__version__ = "0.1.0"
