"""The reporting stage: the experiments overview, the one deciding CI per experiment, charts and HTML reports."""
