"""Speed and memory measured against peers and predictions; each module runs with ``python -m``."""
