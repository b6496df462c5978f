"""The cloud's HTTP APIs: auth (login, refresh), customer API (sites, devices, credentials), operator API."""
