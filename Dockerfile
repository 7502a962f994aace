# One image for every process of docker-compose.yml: `entities migrate`,
# `celery -A workers worker` and `celery -A workers beat`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md alembic.ini celeryconfig.py ./
COPY entities ./entities
COPY workers ./workers
COPY migrations ./migrations
# Entity modules are imported from the working directory (ENTITIES_MODULES=examples).
COPY examples ./examples
RUN pip install . && useradd --system --no-create-home --uid 10001 entities

USER entities
ENV ENTITIES_MODULES=examples
CMD ["celery", "-A", "workers", "worker", "-l", "info"]
