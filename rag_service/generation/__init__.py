"""The vLLM engine adapter, and the one-time offline preparation of the model."""
