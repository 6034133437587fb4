# One image for every role: the API (with its services), workers and Flower.
# Add your flow modules to the image (or mount them) and name them in ORCHESTRATOR_FLOW_MODULES.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY orchestrator orchestrator
COPY workers workers
COPY api api
COPY examples examples
RUN pip install ".[postgres]" && useradd --create-home orchestrator
USER orchestrator

EXPOSE 4200 5555
CMD ["orchestrator", "server", "start", "--host", "0.0.0.0", "--port", "4200"]
