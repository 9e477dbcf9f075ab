"""edgeloop trainer."""
