"""Following the chain: the exchange-cycle thread and the withdraw desk."""
