"""The slim LLaVA trainer that learns from the cached tokens (not built yet)."""
