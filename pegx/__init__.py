"""pegx: the Halo Peg Exchange API for BitBay on a durable LevelDB ledger."""

__version__ = "0.1.0"
