"""The one settings object. Read at each entry point, then passed down."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.validation import MAX_EVENT_BYTES


class Topics(BaseModel):
    """Topic names; a prefix lets tests and tenants share one cluster (derived from Settings, never from the environment)."""

    model_config = ConfigDict(frozen=True)

    raw: str = "traces.raw"
    valid: str = "traces.valid"
    dlq: str = "traces.dlq"
    datasets: str = "datasets.events"
    runs: str = "runs.events"
    models: str = "models.events"

    @property
    def materialized(self) -> tuple[str, ...]:
        """The topics the materializer reads into the warehouse: its one list."""
        return (self.valid, self.dlq, self.datasets, self.runs, self.models)


class Settings(BaseSettings):
    """Everything configurable, from ``TRACESTREAM_*`` environment variables.

    Build it once per process (CLI command, worker, test session) and pass it
    down; library code never reads the environment itself.
    """

    model_config = SettingsConfigDict(env_prefix="TRACESTREAM_", frozen=True)

    home: Path = Field(
        default=Path(".tracestream"),
        description="Folder for the local stack: broker data, warehouse data, caches, logs.",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "tracestream",
        description="Download cache shared by every stack on this machine (the broker's jars).",
    )
    kafka_bootstrap: str | None = Field(
        default=None,
        description="host:port of an existing Kafka cluster; when unset the local broker is used.",
    )
    kafka_security_protocol: str = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (managed clusters need SSL/SASL)."
    )
    kafka_sasl_mechanism: str | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, with a SASL_* security protocol."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password (never logged).")
    kafka_ssl_cafile: Path | None = Field(default=None, description="CA bundle that signed the brokers' certificates.")
    kafka_ssl_certfile: Path | None = Field(default=None, description="Client certificate (PEM), for mutual TLS.")
    kafka_ssl_keyfile: Path | None = Field(default=None, description="Client private key (PEM), for mutual TLS.")
    kafka_delivery_timeout_s: float = Field(
        default=120.0,
        description="How long a producer keeps retrying an event before it reports it as not acknowledged.",
    )
    kafka_version: str = Field(default="4.3.1", description="org.apache.kafka:kafka_2.13 version for the local broker.")
    kafka_heap_mb: int = Field(default=768, description="JVM heap of the local broker, in MiB.")
    clickhouse_url: str | None = Field(
        default=None,
        description="http(s)://user:pass@host:port/db of a ClickHouse server; when unset the embedded chDB engine is used.",
    )
    clickhouse_database: str = Field(default="tracestream", description="ClickHouse database holding the tables.")
    topic_prefix: str = Field(default="", description="Prepended to every topic name.")
    partitions: int = Field(default=4, description="Partitions of the topics tracestream creates.")
    app_id: str = Field(default="tracestream", description="faust app id; also the processors' consumer group.")
    web_host: str = Field(default="127.0.0.1", description="Interface of the worker's HTTP endpoint.")
    web_port: int = Field(default=6066, description="Port of the worker's HTTP endpoint (stats while chDB is owned).")
    max_event_bytes: int = Field(default=MAX_EVENT_BYTES, description="Largest trace event accepted, in bytes.")
    materialize_batch_size: int = Field(default=2000, description="Rows per ClickHouse insert.")
    materialize_batch_seconds: float = Field(default=0.2, description="Longest wait to fill an insert batch.")
    warehouse_retry_max_seconds: float = Field(default=5.0, description="Ceiling of the backoff while the warehouse is down.")
    ray_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ray_address", "TRACESTREAM_RAY_ADDRESS", "RAY_ADDRESS"),
        description="Address of an existing Ray cluster (Ray's own RAY_ADDRESS); when unset training starts a local one.",
    )
    ray_temp_dir: Path = Field(
        default=Path("/tmp/tracestream-ray"),
        description="Temp folder of the local Ray instance; keep it short (Ray's unix socket paths must fit ~107 chars).",
    )
    api_host: str = Field(default="127.0.0.1", description="Interface the read API (`tracestream serve`) listens on.")
    api_port: int = Field(default=8080, description="Port of the read API.")
    api_token: str | None = Field(
        default=None,
        description="Bearer token the ingest door (POST /api/traces) requires; when unset, ingest is open.",
    )
    api_protect_reads: bool = Field(
        default=False, description="Put the read endpoints behind api_token too (health and metrics stay open)."
    )
    api_max_body_bytes: int = Field(
        default=64 * 1024 * 1024, description="Largest HTTP request body the API reads, in bytes (413 above)."
    )
    api_cache_entries: int = Field(
        default=4096,
        description="Read answers the API keeps while an embedded warehouse is unchanged (0: none). "
        "Every write empties it; with a ClickHouse server (other writers) it is not used.",
    )

    def child_environment(self) -> dict[str, str]:
        """The environment for a child process that must build these same settings.

        The process environment (PATH, ...) with every TRACESTREAM_ variable
        replaced by this object's values.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACESTREAM_")}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None:
                env[f"TRACESTREAM_{name.upper()}"] = str(value)
        return env

    @property
    def topics(self) -> Topics:
        p = self.topic_prefix
        return Topics(
            raw=f"{p}traces.raw",
            valid=f"{p}traces.valid",
            dlq=f"{p}traces.dlq",
            datasets=f"{p}datasets.events",
            runs=f"{p}runs.events",
            models=f"{p}models.events",
        )

    @property
    def kafka_dir(self) -> Path:
        return self.home / "kafka"

    @property
    def warehouse_dir(self) -> Path:
        return self.home / "warehouse"

