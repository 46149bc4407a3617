# One slim image for the API, the worker, the `promptbatch` CLI and the mock provider; runs as
# a non-root user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --create-home --uid 10001 promptbatch

COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY shared ./shared
COPY promptbatch ./promptbatch
RUN pip install '.[anthropic,google_genai,ollama]' && rm -rf build *.egg-info
# The OpenAI-compatible mock, for the compose profile `mock` (an offline stack end to end),
# with the modules it imports.
COPY tests/__init__.py tests/mock_openai.py tests/mock_batches.py tests/mock_anthropic.py ./tests/

USER promptbatch
EXPOSE 8000
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]
