"""`fuseinfer serve`: an OpenAI-compatible HTTP server over the reference runtime."""
