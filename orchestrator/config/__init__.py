"""Settings (``ORCHESTRATOR_*``) and the TLS options every Redis client uses."""
