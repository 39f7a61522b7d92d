"""The API's routes, one router per area; ``tieline.services.api.app`` includes them all."""
