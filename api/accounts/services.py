import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from api.accounts.models import ApiToken

TOKEN_PREFIX = "af_"
LAST_USED_RESOLUTION = timedelta(minutes=1)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_create(*, user: AbstractBaseUser, name: str = "default", expires_in_days: int | None = None) -> str:
    """Create a token for user and return it in plain text (the only time it exists)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
    ApiToken.objects.create(user=user, name=name, key_hash=token_hash(token), prefix=token[:10],
                            expires_at=expires_at)
    return token


def token_authenticate(*, token: str) -> AbstractBaseUser | None:
    """The token's user, or None for an unknown, revoked (deleted) or expired token or an inactive user."""
    row = ApiToken.objects.select_related("user").filter(key_hash=token_hash(token)).first()
    if row is None or not row.user.is_active or (row.expires_at and row.expires_at <= timezone.now()):
        return None
    now = timezone.now()
    # A write per request costs the hot polling path; the UI shows last use to the minute.
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
    return row.user


def user_get_or_create(*, username: str) -> AbstractBaseUser:
    user, _ = get_user_model().objects.get_or_create(username=username)
    return user


def token_revoke(*, user: AbstractBaseUser, token_id: int) -> bool:
    """Delete one of the user's tokens; False when there is none with that id (another user's included)."""
    deleted, _ = ApiToken.objects.filter(id=token_id, user=user).delete()
    return deleted > 0
