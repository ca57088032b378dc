from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "api.registry"
    label = "registry"
