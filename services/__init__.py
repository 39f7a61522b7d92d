"""tieline's services: the write side (people, interactions), the HTTP API, the CLI and the runtime."""
