"""tieline's services: the write side (people, interactions), HTTP API, CLI and runtime."""
