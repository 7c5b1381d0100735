"""Webhook alerts against a real receiver on 127.0.0.1: delivery, retries with backoff, no blocking,
no secrets in the body."""

from __future__ import annotations

import asyncio
import time

from hotspare.ops.alerts import AlertKind, WebhookAlerter
from hotspare.ops.config import AlertSettings

from .webhook import WebhookReceiver


def settings(url: str, **overrides: object) -> AlertSettings:
    return AlertSettings.model_validate({"webhook_url": url, "backoff_s": 0.05, "timeout_s": 2, **overrides})


async def test_an_alert_is_retried_with_backoff_until_delivered() -> None:
    with WebhookReceiver() as receiver:
        receiver.script(503, 500)
        alerter = WebhookAlerter(settings(receiver.url))
        alerter.start()
        try:
            alerter.notify(AlertKind.BREAKER_OPEN, "anth", "5 consecutive failures")
            await asyncio.to_thread(receiver.wait_for, lambda bodies: len(bodies) == 3)
            for _ in range(100):
                if alerter.num_delivered:
                    break
                await asyncio.sleep(0.01)
        finally:
            await alerter.aclose()
        times = [at for at, _ in receiver.received]
        assert times[1] - times[0] >= 0.05 and times[2] - times[1] >= 0.1  # 0.05 s, then doubled
        body = receiver.received[-1][1]
        assert {k: body[k] for k in ("event", "upstream", "reason", "source")} == {
            "event": "breaker_open",
            "upstream": "anth",
            "reason": "5 consecutive failures",
            "source": "hotspare",
        }
        assert set(body) == {"event", "upstream", "reason", "at", "source", "version", "host"}
        assert (alerter.num_delivered, alerter.num_failed) == (1, 0)


async def test_notify_never_blocks_on_a_dead_receiver_and_gives_up() -> None:
    with WebhookReceiver() as receiver:
        dead_url = receiver.url
    alerter = WebhookAlerter(settings(dead_url, max_attempts=2))
    alerter.start()
    try:
        began = time.monotonic()
        for i in range(1000):
            alerter.notify(AlertKind.FAILBACK, f"u{i % 3}", "circuit closed")
        assert time.monotonic() - began < 0.5
        for _ in range(200):
            if alerter.num_failed:
                break
            await asyncio.sleep(0.02)
        assert alerter.num_failed >= 1 and alerter.num_dropped == 1000 - 256
    finally:
        await alerter.aclose()


async def test_failover_alerts_are_coalesced_per_upstream_and_cause() -> None:
    with WebhookReceiver() as receiver:
        alerter = WebhookAlerter(settings(receiver.url, failover_cooldown_s=60))
        alerter.start()
        try:
            for _ in range(5):
                alerter.notify(AlertKind.FAILOVER, "anth", "server_error, before first byte")
            alerter.notify(AlertKind.FAILOVER, "anth", "stream_cut, mid stream")
            await asyncio.to_thread(receiver.wait_for, lambda bodies: len(bodies) == 2)
            await asyncio.sleep(0.1)
        finally:
            await alerter.aclose()
        assert [b["reason"] for _, b in receiver.received] == [
            "server_error, before first byte",
            "stream_cut, mid stream",
        ]


async def test_the_retry_backoff_stops_doubling_at_its_cap() -> None:
    with WebhookReceiver() as receiver:
        dead_url = receiver.url
    waits: list[float] = []

    async def no_sleep(delay_s: float) -> None:
        waits.append(delay_s)

    alerter = WebhookAlerter(settings(dead_url, max_attempts=20, backoff_s=0.5), sleep=no_sleep)
    alerter.start()
    try:
        alerter.notify(AlertKind.BREAKER_OPEN, "anth", "5 consecutive failures")
        for _ in range(500):
            if alerter.num_failed:
                break
            await asyncio.sleep(0.01)
    finally:
        await alerter.aclose()
    assert alerter.num_failed == 1
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0] + [30.0] * 13  # max_backoff_s, by default 30 s
