"""bnfused benchmarks: kernel rows, memory, end-to-end training step, reports."""
