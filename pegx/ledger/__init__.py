"""The ledger: engine (the façade and its lock), op log, store (the only plyvel user), key schema."""
