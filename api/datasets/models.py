from django.conf import settings
from django.db import models


class DatasetStatus(models.TextChoices):
    VALIDATING = "validating"
    READY = "ready"
    INVALID = "invalid"


class Task(models.TextChoices):
    CLASSIFICATION = "classification"
    SFT = "sft"
    TOKEN_CLASSIFICATION = "token-classification"


class Dataset(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=200)
    task = models.CharField(max_length=32, choices=Task.choices)
    format = models.CharField(max_length=8)
    filename = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64, db_index=True)
    size_bytes = models.BigIntegerField()
    base_model = models.CharField(max_length=100, help_text="tokenizer used for the length stats")
    status = models.CharField(max_length=16, choices=DatasetStatus.choices, default=DatasetStatus.VALIDATING)
    rows = models.IntegerField(null=True)
    report = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    validated_at = models.DateTimeField(null=True)

    class Meta:
        ordering = ["-id"]
