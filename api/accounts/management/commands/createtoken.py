from django.core.management.base import BaseCommand

from api.accounts.services import token_create, user_get_or_create


class Command(BaseCommand):
    help = "Create USERNAME if needed and print a new API token for it."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("username")
        parser.add_argument("--name", default="default", help="a label for the token")
        parser.add_argument("--days", type=int, default=None, help="expire after this many days (default: never)")

    def handle(self, *args, username: str, name: str, days: int | None, **options):  # type: ignore[no-untyped-def]
        user = user_get_or_create(username=username)
        self.stdout.write(token_create(user=user, name=name, expires_in_days=days))
