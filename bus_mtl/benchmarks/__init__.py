"""Benchmarks that print numbers (never timed tests): ``bus-mtl bench data|models|inference|gpu``."""
