"""Publishing: the outbox relay that puts every emitted report on the report bus."""
