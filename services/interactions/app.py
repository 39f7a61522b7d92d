"""Composition root of the interactions service."""

from __future__ import annotations

from faststream import FastStream
from tieline.plumbing.config import Settings
from tieline.services.service_app import INTERACTION_TYPES, create_service_app


def create_app(settings: Settings) -> FastStream:
    """The interactions service: validates and publishes relationship.* and retractions."""
    return create_service_app(settings, "interactions", INTERACTION_TYPES)
