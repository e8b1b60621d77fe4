"""API users and their tokens (DRF token authentication)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from rest_framework.authtoken.models import Token

from ledger.errors import InvalidRequest

DEMO_USERNAME = "demo"


def ensure_token(*, username: str = DEMO_USERNAME, rotate: bool = False) -> str:
    """The API token of `username`, creating the user (no password: token only) and token if needed."""
    users = get_user_model()
    username = username.strip()
    try:
        users.username_validator(username)
    except ValidationError as invalid:
        raise InvalidRequest("username", " ".join(invalid.messages)) from None
    if not username or len(username) > 150:
        raise InvalidRequest("username", "must be 1 to 150 characters")
    with transaction.atomic():
        user, created = users.objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        if rotate:
            Token.objects.filter(user=user).delete()
        token, _ = Token.objects.get_or_create(user=user)
    return token.key
