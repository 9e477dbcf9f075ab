"""edgeloop agent."""
