"""Operator tools: backup, restore, audit, recover."""
