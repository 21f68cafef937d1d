"""The worker side: a uvicorn server exec'd from its release's interpreter."""
