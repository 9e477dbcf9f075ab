"""Plain functions behind the REST routes and the gRPC servicer (no HTTP or gRPC types in here,
except the fleet protos that are the wire contract with agents)."""
