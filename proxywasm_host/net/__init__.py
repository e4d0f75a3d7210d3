"""Small network helpers below the driver: the ASGI lifespan, the test upstream, forwarded callouts."""
