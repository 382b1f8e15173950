"""Operations: what needs the operator (health), Prometheus metrics and the status page."""
