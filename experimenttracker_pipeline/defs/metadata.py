"""Helpers that turn stage results into Dagster metadata values."""


import dagster as dg



def number_or_null(value):
    """Numeric metadata (plotted across materializations); missing values stay visible as null."""
    return dg.MetadataValue.null() if value is None else float(value)


