"""Alembic environment: migrate on the connection `experimenttracker_pipeline.store.migrations.upgrade` hands over
(inside its locked transaction); the target schema is `experimenttracker_pipeline.store.schema`."""

from alembic import context

from experimenttracker_pipeline.store.migrations import objects_of, record_step
from experimenttracker_pipeline.store.schema import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `experimenttracker migrate` (offline SQL generation is not supported)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    include_object=objects_of(connection.dialect.name),
    on_version_apply=lambda ctx, step, heads, run_args: record_step(config, step),
)
with context.begin_transaction():
    context.run_migrations()
