"""edgeloop controller."""
