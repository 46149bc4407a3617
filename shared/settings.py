"""The one settings class: every knob the API and the workers read, from the environment, once."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.schemas import DefaultProvider, Mode, Provider


class SettingsError(RuntimeError):
    """The configuration cannot work; the message says what to set."""


class Settings(BaseSettings):
    """Service configuration. `PROMPTBATCH_*` for the service's own, plain names for shared ones."""

    model_config = SettingsConfigDict(
        env_prefix="PROMPTBATCH_",
        env_ignore_empty=True,  # `FOO=` (as compose writes `${FOO:-}`) means unset
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL"))
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL")
    )
    provider: DefaultProvider | None = None
    #: Other LangChain chat model providers, each enabled by its own variables (a batch picks
    #: one with a `"<provider>:<model>"` model name).
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_BASE_URL")
    )
    google_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("GOOGLE_API_KEY")
    )
    ollama_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OLLAMA_BASE_URL")
    )
    default_model: str = Field(default="gpt-4o-mini", min_length=1)
    #: The model of an `/v1/embeddings` batch that names none.
    default_embedding_model: str = Field(default="text-embedding-3-small", min_length=1)

    max_prompts: int = Field(default=50_000, ge=1)
    max_prompt_chars: int = Field(default=100_000, ge=1)
    max_concurrency: int = Field(default=64, ge=1)
    default_concurrency: int = Field(default=16, ge=1)
    max_output_tokens: int = Field(default=32_768, ge=1)
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=20)
    #: Provider requests / tokens per minute for the whole service, per model (0: none set;
    #: follow the provider's x-ratelimit-* headers and 429s).
    rpm_limit: int = Field(default=0, ge=0)
    tpm_limit: int = Field(default=0, ge=0)
    #: How long an item keeps being retried while the provider only says "later" (429).
    item_deadline_s: float = Field(default=3600.0, gt=0)
    #: Most `/v1/embeddings` inputs in one provider call, and most tokens (estimated at four
    #: characters a token) in one: OpenAI takes 2,048 inputs and 300,000 tokens a request.
    embed_group: int = Field(default=256, ge=1, le=2048)
    embed_group_tokens: int = Field(default=100_000, ge=1, le=300_000)

    redis_timeout_s: float = Field(default=2.0, gt=0)
    worker_max_jobs: int = Field(default=8, ge=1)
    worker_poll_delay_s: float = Field(default=0.02, gt=0)
    worker_heartbeat_s: float = Field(default=2.0, gt=0)
    worker_alive_s: float = Field(default=6.0, gt=0)
    job_timeout_s: int = Field(default=24 * 3600, ge=1)
    #: Items per chunk: a chunk is one arq job, the unit spread over workers and resumed.
    chunk_size: int = Field(default=100, ge=1)
    #: A batch's calls one chunk run carries before the batch may spread over another job slot:
    #: a batch runs at most ceil(max_concurrency / this) chunks that still have calls to start.
    run_concurrency: int = Field(default=16, ge=1)
    #: How long a chunk stays claimed by a worker that stopped renewing it (killed, frozen):
    #: another worker resumes the chunk's unfinished items after this.
    lease_s: float = Field(default=30.0, ge=1)
    #: Runs of one chunk that may end with their worker dead before its items are failed.
    chunk_max_attempts: int = Field(default=3, ge=1)
    #: How often one worker looks for batches whose work is on no queue and re-queues it.
    reconcile_s: float = Field(default=30.0, gt=0)
    #: How often a worker checks whether the batches it runs were cancelled or deleted.
    worker_watch_s: float = Field(default=0.5, gt=0)
    #: How long a finished batch and its results are kept.
    result_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    #: How long an `Idempotency-Key` is remembered.
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=1)
    #: How long a worker keeps retrying Redis (with backoff) before giving up on a command;
    #: unset, the lease less three heartbeats (`redis_retry_s`). Shorter than the lease by three
    #: heartbeats at most: a worker's leases outlive any outage it rides out, so no other worker
    #: takes its chunks over and makes its calls again.
    worker_redis_retry_s: float | None = Field(default=None, gt=0)
    offline_latency_ms: int = Field(default=0, ge=0)

    # -- security and limits -------------------------------------------------------------------
    #: Comma-separated bearer keys; set = every /v1 route needs one, each key sees its own batches.
    api_keys: SecretStr | None = None
    #: Largest request body, counted while it is read (uvicorn has no limit of its own).
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    #: Batch submissions per minute per key, across every API process (0 = no limit).
    rate_limit_per_min: int = Field(default=0, ge=0)
    #: Most prompts one key may have not yet final across its batches (0 = no limit).
    max_queued_prompts: int = Field(default=0, ge=0)
    #: How a batch runs when it does not say: its calls made here (`direct`), or handed to the
    #: provider's own Batch API (`provider_batch`, half the price, within a day).
    default_mode: Mode = "direct"
    #: Most lines and bytes of one provider batch (a batch's items split into as many).
    provider_batch_max_lines: int = Field(default=50_000, ge=1)
    provider_batch_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    #: How often a provider batch is polled (less often while it is slow to move).
    provider_poll_s: float = Field(default=60.0, gt=0)
    #: Largest file `POST /openai/v1/files` takes, in bytes and in request lines.
    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    max_file_lines: int = Field(default=50_000, ge=1)
    #: How long an uploaded file is kept unless deleted first (default 30 days).
    file_ttl_s: int = Field(default=30 * 24 * 3600, ge=1)
    #: What one key's files may hold in Redis at once: bytes, and files.
    max_file_storage_bytes: int = Field(default=1024 * 1024 * 1024, ge=1)
    max_files_per_key: int = Field(default=1000, ge=1)
    #: Large submissions (staged a page at a time) one key may have in progress at once.
    max_uploads_per_key: int = Field(default=4, ge=1)
    #: Open event streams per key, across every API process (429 with Retry-After beyond).
    max_streams_per_key: int = Field(default=100, ge=1)
    #: Redis connections one API process opens at most; a request waits up to
    #: `PROMPTBATCH_REDIS_TIMEOUT_S` for one, then gets a 503.
    redis_max_connections: int = Field(default=200, ge=4)
    #: Let LangChain/LangSmith tracing run in workers: it sends every prompt and reply to the
    #: tracing endpoint, so it stays off (whatever LANGSMITH_TRACING says) unless this is true.
    allow_tracing: bool = False

    # -- lifecycle -------------------------------------------------------------------------------
    #: How long a webhook event is retried (exponential backoff with jitter) before it is dropped.
    webhook_retry_s: float = Field(default=3 * 24 * 3600.0, gt=0)
    #: Timeout of one webhook delivery attempt.
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    #: Let webhook URLs resolve to loopback, private, link-local or metadata addresses.
    webhook_allow_private: bool = False

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: SecretStr | None) -> SecretStr | None:
        # The message never quotes a key: settings errors are printed at start.
        if value is not None:
            for key in value.get_secret_value().split(","):
                if not key.strip():
                    raise ValueError("an empty key (look for ',,', a stray comma or blanks)")
                if key != key.strip() or any(c.isspace() for c in key):
                    raise ValueError("a key with white space in it")
        return value

    @property
    def api_key_list(self) -> tuple[str, ...]:
        """The configured bearer keys; empty when authentication is off."""
        return tuple(self.api_keys.get_secret_value().split(",")) if self.api_keys else ()

    port: int = Field(default=8000, ge=1, le=65535, validation_alias=AliasChoices("PORT"))
    #: Where `make run` keeps the embedded Valkey server's data (AOF).
    data_dir: Path = Path(".data")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_concurrency > self.max_concurrency:
            raise ValueError("PROMPTBATCH_DEFAULT_CONCURRENCY exceeds PROMPTBATCH_MAX_CONCURRENCY")
        if self.worker_alive_s <= self.worker_heartbeat_s:
            raise ValueError(
                "PROMPTBATCH_WORKER_ALIVE_S must exceed PROMPTBATCH_WORKER_HEARTBEAT_S"
            )
        if self.lease_s < 3 * self.worker_heartbeat_s:
            raise ValueError(
                "PROMPTBATCH_LEASE_S must be at least 3 x PROMPTBATCH_WORKER_HEARTBEAT_S "
                "(leases are renewed on every heartbeat)"
            )
        retry_s = self.worker_redis_retry_s
        if retry_s is not None and retry_s + 3 * self.worker_heartbeat_s > self.lease_s:
            raise ValueError(
                "PROMPTBATCH_WORKER_REDIS_RETRY_S must be shorter than PROMPTBATCH_LEASE_S by "
                "3 x PROMPTBATCH_WORKER_HEARTBEAT_S, so that a worker's leases outlive a Redis "
                "outage it rides out (another worker would take its chunks over and pay for "
                "its calls in flight again)"
            )
        if self.resolved_provider == "openai" and not (self.openai_api_key or self.openai_base_url):
            raise ValueError(
                "PROMPTBATCH_PROVIDER=openai needs OPENAI_API_KEY, or OPENAI_BASE_URL for a "
                "local OpenAI-compatible server"
            )
        if self.default_mode == "provider_batch" and self.resolved_provider != "openai":
            raise ValueError(
                "PROMPTBATCH_DEFAULT_MODE=provider_batch needs a provider with a Batch API "
                "(PROMPTBATCH_PROVIDER=openai)"
            )
        return self

    @property
    def redis_retry_s(self) -> float:
        """How long a worker retries Redis: as set, else the lease less three heartbeats."""
        if self.worker_redis_retry_s is not None:
            return self.worker_redis_retry_s
        return max(0.1, self.lease_s - 3 * self.worker_heartbeat_s)

    @property
    def resolved_provider(self) -> DefaultProvider:
        """The provider new batches run on: explicit, else `openai` when a key is set."""
        if self.provider is not None:
            return self.provider
        return "openai" if self.openai_api_key is not None else "offline"

    def configured(self, provider: Provider) -> bool:
        """Whether this process has what `provider` needs (its key, or its server's URL)."""
        found = {
            "offline": True,
            "openai": self.openai_api_key is not None or self.openai_base_url is not None,
            "anthropic": self.anthropic_api_key is not None,
            "google_genai": self.google_api_key is not None,
            "ollama": self.ollama_base_url is not None,
        }
        return found[provider]

    def require_redis_url(self) -> str:
        """REDIS_URL, or a clear error: the API and workers never guess a Redis."""
        if not self.redis_url:
            raise SettingsError(
                "REDIS_URL is not set. Point it at a Redis/Valkey server "
                "(e.g. REDIS_URL=redis://localhost:6379/0), or use `make run`, "
                "which starts an embedded Valkey server for you."
            )
        return self.redis_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once; a clear error if they are wrong."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise SettingsError(f"Invalid configuration: {problems}") from None


def _describe(error: Any) -> str:
    names = [str(part) for part in error.get("loc", ())]
    where = env_name(names[0]) if names else "settings"
    return f"{where}: {error.get('msg', 'invalid')}"


def env_name(field: str) -> str:
    """The environment variable a setting is read from (`PORT`, `PROMPTBATCH_MAX_PROMPTS`)."""
    info = Settings.model_fields.get(field.lower())
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return f"PROMPTBATCH_{field.upper()}"


#: What turns LangChain/LangSmith tracing on (the first four in the order langsmith reads them).
#: All are set to "false" to turn it off: langchain_core refuses to run a model with
#: LANGCHAIN_TRACING or LANGCHAIN_HANDLER (its old tracer) set while the current one is off.
TRACING_VARS = (
    "LANGSMITH_TRACING_V2",
    "LANGCHAIN_TRACING_V2",
    "LANGSMITH_TRACING",
    "LANGCHAIN_TRACING",
    "LANGCHAIN_HANDLER",
)


def tracing_asked() -> list[str]:
    """The tracing variables the environment turns on (as langchain_core reads a value)."""
    return [
        name
        for name in TRACING_VARS
        if (value := os.environ.get(name)) is not None
        and value.strip() not in ("", "0", "false", "False")
    ]


def turn_tracing_off() -> None:
    """Set every tracing variable to "false", for the libraries that read them later."""
    for name in TRACING_VARS:
        os.environ[name] = "false"
