"""Signed webhooks (Standard Webhooks): endpoints, deliveries, the delivery process."""
