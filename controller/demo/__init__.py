"""`edgeloop demo`: the whole loop on one machine, ending in an HTML report."""
