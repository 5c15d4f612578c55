"""Benchmarks of meanshift-pipeline against scikit-learn and the seed notebook's algorithm."""
