"""The Celery application, on the same RabbitMQ as the bus."""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from service.core.config import Settings

settings = Settings.from_env()

#: Seconds between periodic maintenance runs (beat).
SWEEP_EVERY_S = max(1.0, settings.heartbeat_s)
PRUNE_EVERY_S = 300.0

# the demo tasks exist only in development: a production worker does not even know them
# a ";"-separated list of a cluster's nodes is Celery's (kombu's) failover list as it is
app = Celery("herald", broker=settings.broker_url,
             include=["workers.maintenance", "workers.webhooks", "workers.webhook_presence",
                      *([] if settings.production else ["workers.tasks"])])
_task_exchange = Exchange(settings.task_queue, type="direct", durable=True)
_quorum = settings.task_queue_type == "quorum"
app.conf.update(
    # quorum queues are replicated over the cluster's nodes (Celery then turns off global
    # QoS, which they lack, by itself: worker_detect_quorum_queues)
    task_queues=[Queue(settings.task_queue, _task_exchange, routing_key=settings.task_queue,
                       durable=True,
                       queue_arguments={"x-queue-type": "quorum"} if _quorum else None)],
    task_default_queue=settings.task_queue,
    task_default_exchange=settings.task_queue,
    task_default_routing_key=settings.task_queue,
    # a task is acknowledged when it ends, so a worker that dies mid-run hands it back
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_ignore_result=True,  # outcomes live in Herald's own tasks table
    broker_heartbeat=settings.broker_heartbeat_s,
    broker_failover_strategy="round-robin",
    # on a cluster an enqueue is answered once a majority of nodes hold the task
    broker_transport_options={"confirm_publish": True} if _quorum else {},
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    worker_send_task_events=True,  # for Flower
    task_send_sent_event=True,
    worker_hijack_root_logger=False,
    event_exchange=f"{settings.task_queue}.events",
    beat_schedule={
        "sweep-dead-frontends": {"task": "herald.sweep_frontends", "schedule": SWEEP_EVERY_S},
        "prune-message-log": {"task": "herald.prune_log", "schedule": PRUNE_EVERY_S},
    },
)

# importing the signal handlers registers them in every process that loads the app
from workers import notify  # noqa: E402,F401
