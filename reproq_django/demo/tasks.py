"""Sample tasks the demo enqueues through Django's Tasks API."""

from __future__ import annotations

import time

from django.tasks import task


@task()
def add(a: int, b: int) -> int:
    return a + b


@task()
def greet(name: str) -> str:
    return f"Hello, {name}!"


@task()
def flaky_payment(order_id: int) -> None:
    raise ConnectionError(f"payment gateway unreachable for order {order_id}")


@task()
def fetch_page(page: int) -> dict:
    return {"page": page, "rows": page * 10}


@task()
def summarize(label: str) -> str:
    return f"{label}: all pages fetched"


@task()
def update_account(account: str, step: int) -> str:
    time.sleep(0.2)  # long enough that a second worker slot would overlap without the lock
    return f"{account} step {step}"
