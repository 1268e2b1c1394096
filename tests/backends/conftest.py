"""The backend tests share the root conftest's fixtures (``built_fixtures``, ``smollm2_gguf``)."""
