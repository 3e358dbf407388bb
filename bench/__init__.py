"""kvlink's benchmarks: run with `make bench`; results land in bench/results.md."""
