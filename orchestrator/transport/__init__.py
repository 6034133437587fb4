"""The Celery seam: what the product sends (:mod:`~orchestrator.transport.messaging`) and the Celery configuration."""
