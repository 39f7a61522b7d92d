"""Composition root of the people service."""

from __future__ import annotations

from faststream import FastStream
from tieline.plumbing.config import Settings
from tieline.services.service_app import PEOPLE_TYPES, create_service_app


def create_app(settings: Settings) -> FastStream:
    """The people service: validates and publishes person.added / person.updated."""
    return create_service_app(settings, "people", PEOPLE_TYPES)
