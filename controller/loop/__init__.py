"""The closed loop: goals per device class, rounds of candidates measured on devices, selection."""
