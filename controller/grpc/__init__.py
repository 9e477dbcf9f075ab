"""The gRPC fleet service: a thin servicer over controller.services."""
