from django.apps import AppConfig


class OpenAICompatConfig(AppConfig):
    name = "api.openai_compat"
    label = "openai_compat"
