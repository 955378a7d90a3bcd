"""Benchmark tools: the 100 Hz stream benchmark over DDS (stream), a small cyclictest (stall_probe), the
control-core benchmark (control) and ``make bench``'s report (report; ``python -m apt_policy.bench``)."""
