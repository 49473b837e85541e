"""atlas: activation atlases for trained PyTorch CNNs."""

__version__ = "0.1.0"
