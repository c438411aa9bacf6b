"""Signals sent around a task's life (reproq-django.md §1.11)."""

from django.dispatch import Signal

# sender: the backend class; kwargs: task_result, spec
task_enqueued = Signal()
# sender: "reproq_django.executor"; kwargs: task_context
task_started = Signal()
# sender: "reproq_django.executor"; kwargs: task_context, ok, and error on failure
task_finished = Signal()
