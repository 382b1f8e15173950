"""The embedded simulated BitBay chain (the default backend)."""

from pegx.chain.devnet.node import Devnet

__all__ = ["Devnet"]
