"""Chain backends behind one protocol (chain/base.py): the embedded devnet and a bitbayd client."""
