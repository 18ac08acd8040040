"""One dynamic partition per experiment. The name is the storage key: never rename it."""

import dagster as dg

experiment_partitions = dg.DynamicPartitionsDefinition(name="experiments")
