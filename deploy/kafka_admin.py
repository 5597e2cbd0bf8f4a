"""Topic administration: create the topics that do not exist yet, and wait for their leaders."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from deploy.kafka_clients import KafkaClients
from deploy.kafka_errors import BrokerError, BrokerUnreachableError

T = TypeVar("T")

#: Topic config every topic we create gets unless the caller overrides it:
#: datasets point into the log by offset, so nothing may be deleted by age.
DEFAULT_TOPIC_CONFIG: Mapping[str, str] = {"retention.ms": "-1"}


TopicSpec = Mapping[str, int] | Sequence[tuple[str, int]]


def ensure_topics(
    kafka: KafkaClients,
    topics: TopicSpec,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30,
) -> None:
    """Create the topics that do not exist yet; see ``ensure_topics_async``.

    Usable from synchronous code and from code already inside an event loop
    (it then runs on a helper thread); async code should await
    ``ensure_topics_async`` instead.
    """
    run_sync(ensure_topics_async(kafka, topics, config, timeout_s))


async def ensure_topics_async(
    kafka: KafkaClients,
    topics: TopicSpec,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30,
) -> None:
    """Create the topics that do not exist yet and wait until each has leaders.

    Existing topics are left as they are (their partitions and config are
    the cluster owner's call). New topics get ``DEFAULT_TOPIC_CONFIG``
    (``retention.ms=-1``) overlaid with ``config``, and a replication factor
    of ``min(3, brokers)``.

    Args:
        kafka: the cluster and how to authenticate to it.
        topics: ``{name: partitions}`` or ``[(name, partitions), ...]``.
        config: topic configs for the topics created here.
        timeout_s: the whole operation's deadline.

    Raises:
        BrokerUnreachableError: the cluster did not answer within ``timeout_s``.
        KafkaAuthenticationError: the cluster refused the credentials.
        BrokerError: the cluster refused to create a topic (bad name, policy).
    """
    bootstrap = kafka.bootstrap
    wanted = dict(topics)
    topic_config = {**DEFAULT_TOPIC_CONFIG, **(config or {})}
    admin = kafka.admin(request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await kafka.start(admin)
            await _create_missing(admin, wanted, topic_config, timeout_s)
            await _await_leaders(admin, list(wanted))
    except TimeoutError as exc:
        raise BrokerUnreachableError(
            f"Kafka at {bootstrap} did not create or report the topics {sorted(wanted)} within {timeout_s:.0f} s; "
            "check the broker is up (`tracestream stack status`)."
        ) from exc
    except KafkaError as exc:
        raise BrokerUnreachableError(
            f"Kafka at {bootstrap} could not be reached to create topics {sorted(wanted)}: {exc!r}; "
            "check the broker is up (`tracestream stack status`) or TRACESTREAM_KAFKA_BOOTSTRAP."
        ) from exc
    finally:
        await admin.close()


async def _create_missing(
    admin: AIOKafkaAdminClient, wanted: dict[str, int], topic_config: dict[str, str], timeout_s: float
) -> None:
    existing = set(await admin.list_topics())
    brokers = len((await admin.describe_cluster())["brokers"])
    replication = max(1, min(3, brokers))
    new = [
        NewTopic(name, partitions, replication, topic_configs=topic_config)
        for name, partitions in wanted.items()
        if name not in existing
    ]
    if not new:
        return
    response = await admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
    for topic, code, *message in response.topic_errors:
        error = for_code(code)
        if code == 0 or error is TopicAlreadyExistsError:  # a concurrent caller won the race
            continue
        detail = message[0] if message and message[0] else ""
        raise BrokerError(f"Kafka refused to create topic {topic!r}: {error.__name__} {detail}".rstrip())


async def _await_leaders(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    """Wait until every partition has a leader, so a first produce does not bounce."""
    while True:
        described = await admin.describe_topics(names)
        if all(
            t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        await asyncio.sleep(0.1)


async def count_brokers(kafka: KafkaClients, timeout_s: float) -> int:
    """How many brokers a metadata request lists; 0 if the cluster does not answer yet."""
    admin = kafka.admin(request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            return len((await admin.describe_cluster())["brokers"])
    except (KafkaError, OSError, TimeoutError):
        return 0
    finally:
        await admin.close()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracestream-kafka") as pool:
        return pool.submit(asyncio.run, coro).result()
