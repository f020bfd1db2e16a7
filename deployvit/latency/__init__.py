"""Latency as a measured number: calibrated lookup tables, the profiler that makes them, the table
resolver, and the GPU estimate. The timing loop is `deployvit.timing`, the runtimes it times in are
`deployvit.runtimes` (both below this package).

See docs/DESIGN.md section 4 for why eager timings and FLOPs cannot rank architectures on a GPU.
"""
