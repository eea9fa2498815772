"""Test helpers shipped with the package: stand-in and real servers that tests and benchmarks start locally."""
