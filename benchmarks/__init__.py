"""Speed and quality benchmarks of diffjax (`make bench`); never run by the test suite."""
