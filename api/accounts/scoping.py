"""Who sees what: everyone their own objects; staff (operators) everyone's. Every selector that reads a
user's objects filters through here, so the rule lives in one place."""

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q


def visible_to(user: AbstractBaseUser, field: str = "owner") -> Q:
    """A filter for the objects `user` may read: `field` is the path to the owning user."""
    return Q() if getattr(user, "is_staff", False) else Q(**{field: user})
