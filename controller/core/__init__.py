"""Settings and other process-wide basics of the controller."""
