from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    """A bearer token. Only its sha256 is stored; the plain token is shown once, at creation."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, default="default")
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="none: never expires")

    def __str__(self) -> str:
        return f"{self.user} {self.prefix}…"
