"""Hand-run benchmarks: dispatch under a real systemd beside the original project.

Not part of the test suite. See bench/README.md."""
