"""The bench scenarios. Each returns a JSON-able dict of absolute numbers; ``bench.analysis``
turns them into ratios and target checks."""
