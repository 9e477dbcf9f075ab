"""Task packages (one per task: classification, detection ...); see registry.py."""
