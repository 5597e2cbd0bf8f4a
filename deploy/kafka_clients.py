"""The one place that builds Kafka clients: where the cluster is and how to authenticate to it.

Every producer, consumer and admin client of tracestream is made here, so a
cluster that needs TLS or SASL (managed Kafka) is configured once, in the
settings, and every part of the platform speaks to it the same way.
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from deploy.settings import Settings
from schemas.errors import ConfigurationError

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_PROBE_TIMEOUT_MS = 5000

Client = TypeVar("Client", AIOKafkaConsumer, AIOKafkaProducer, AIOKafkaAdminClient)


class KafkaAuthenticationError(ConfigurationError):
    """The cluster refused our credentials (or our SASL mechanism); retrying with the same settings cannot help."""


@dataclass(frozen=True)
class KafkaClients:
    """A Kafka cluster's address and credentials; makes the clients that talk to it.

    Clients are made, not shared: an aiokafka client belongs to the event loop
    that started it. The password is kept out of ``repr`` so it is never logged.
    """

    bootstrap: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigurationError(
                f"TRACESTREAM_KAFKA_SECURITY_PROTOCOL={self.security_protocol!r}: use one of {', '.join(SECURITY_PROTOCOLS)}"
            )
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigurationError(
                    f"TRACESTREAM_KAFKA_SASL_MECHANISM={self.sasl_mechanism!r}: {self.security_protocol} needs one of "
                    f"{', '.join(SASL_MECHANISMS)}"
                )
            if not self.sasl_username or self.sasl_password is None:
                raise ConfigurationError(
                    f"{self.security_protocol} needs TRACESTREAM_KAFKA_SASL_USERNAME and TRACESTREAM_KAFKA_SASL_PASSWORD"
                )

    @classmethod
    def from_settings(cls, settings: Settings, bootstrap: str) -> KafkaClients:
        """The clients for ``bootstrap`` (the configured cluster or the local broker) with the settings' security."""
        password = settings.kafka_sasl_password
        return cls(
            bootstrap=bootstrap,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=password.get_secret_value() if password is not None else None,
            ssl_cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            ssl_certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            ssl_keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )

    def options(self) -> dict[str, Any]:
        """The connection keyword arguments every aiokafka client takes."""
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self._ssl_context()
        if self.security_protocol.startswith("SASL_"):
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return options

    def consumer(self, *topics: str, **options: Any) -> AIOKafkaConsumer:
        """A consumer (not started); ``options`` are aiokafka's, e.g. group_id, isolation_level."""
        return AIOKafkaConsumer(*topics, **self.options(), **options)

    def producer(self, **options: Any) -> AIOKafkaProducer:
        """A producer (not started); ``options`` are aiokafka's, e.g. acks, transactional_id."""
        return AIOKafkaProducer(**self.options(), **options)

    def admin(self, **options: Any) -> AIOKafkaAdminClient:
        """An admin client (not started)."""
        return AIOKafkaAdminClient(**self.options(), **options)

    async def start(self, client: Client) -> Client:
        """Start ``client``, turning aiokafka's bare "Unable to bootstrap" into an error that says why.

        aiokafka swallows the reason a bootstrap failed (wrong password, wrong
        mechanism); one probe connection finds it. The message names the
        cluster, the protocol, the mechanism and the user, never the password.

        Raises:
            KafkaAuthenticationError: the cluster refused the credentials or the mechanism.
            BrokerUnreachableError: no broker of the cluster answered.
        """
        try:
            await client.start()
        except KafkaConnectionError as exc:
            await _close(client)
            raise await self.connection_error(exc) from None
        except BaseException:
            await _close(client)
            raise
        return client

    async def connection_error(self, exc: BaseException) -> Exception:
        """The clearest error for a failed connection: an authentication problem if a probe finds one."""
        from deploy.kafka_errors import BrokerUnreachableError

        where = f"Kafka at {self.bootstrap} ({self.describe()})"
        refused = await self._probe()
        if refused is not None:
            return KafkaAuthenticationError(
                f"{where}: authentication failed: {refused}; check TRACESTREAM_KAFKA_SASL_USERNAME, "
                "TRACESTREAM_KAFKA_SASL_PASSWORD and TRACESTREAM_KAFKA_SASL_MECHANISM"
            )
        return BrokerUnreachableError(
            f"{where} could not be reached: {exc}; check the broker is up (`tracestream stack status`), "
            "TRACESTREAM_KAFKA_BOOTSTRAP and TRACESTREAM_KAFKA_SECURITY_PROTOCOL"
        )

    def describe(self) -> str:
        """How we connect, for messages: protocol, mechanism and user; never the password."""
        if self.security_protocol.startswith("SASL_"):
            return f"{self.security_protocol}, {self.sasl_mechanism}, user {self.sasl_username!r}"
        return self.security_protocol

    async def _probe(self) -> str | None:
        """Why the first bootstrap server refuses to authenticate us, or None if it does not refuse."""
        if not self.security_protocol.startswith("SASL_"):
            return None
        host, _, port = self.bootstrap.split(",")[0].strip().rpartition(":")
        options = self.options()
        del options["bootstrap_servers"]
        try:
            conn = await create_conn(host, int(port), request_timeout_ms=_PROBE_TIMEOUT_MS, **options)
        except (SaslAuthenticationFailed, UnsupportedSaslMechanismError, IllegalSaslStateError) as exc:
            return str(exc)
        except ValueError as exc:  # aiokafka's SCRAM: the server's proof did not match ours
            return f"SCRAM exchange failed: {exc}"
        except (KafkaError, OSError, TimeoutError):
            return None
        conn.close()
        return None

    def _ssl_context(self) -> ssl.SSLContext:
        return create_ssl_context(cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile)


async def _close(client: AIOKafkaConsumer | AIOKafkaProducer | AIOKafkaAdminClient) -> None:
    with contextlib.suppress(Exception):
        await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
