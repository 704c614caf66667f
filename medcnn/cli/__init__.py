"""Command-line interface (entry point ``medcnn``)."""
