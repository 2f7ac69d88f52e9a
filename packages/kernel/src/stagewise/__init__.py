"""stagewise: a durable workflow engine."""
