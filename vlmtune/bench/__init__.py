"""Benchmarks: `make bench` (vlmtune against TRL + transformers on this machine, `python -m vlmtune.bench`) and
`make bench-gpu` (the same comparison at real model sizes on a GPU, `python -m vlmtune.bench.gpu`)."""
