"""Latency as a measured number: one timing loop, runtimes, calibrated lookup tables, the profiler.

See DESIGN.md section 4 for why eager timings and FLOPs cannot rank architectures on a GPU.
"""
