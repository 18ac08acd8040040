"""Design stage: plans experiments before they start (the proposer) and while they run (adaptive allocation)."""
