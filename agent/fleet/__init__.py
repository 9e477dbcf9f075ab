"""The agent's side of the fleet control plane: enrol, hold the control stream, download and
verify artifacts, run commands through the agent's own functions and report what it measured.

Imports only protos and the agent's public functions (never controller or torch)."""
