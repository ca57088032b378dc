from typing import Any

from django import template

register = template.Library()


@register.filter
def consuming(workers: list[dict[str, Any]], queue: str) -> int:
    """How many of the workers consume `queue`."""
    return sum(queue in w.get("queues", []) for w in workers)
