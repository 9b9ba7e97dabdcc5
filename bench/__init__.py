"""Benchmarks: bench/micro.py (per-message hot path), bench/run.py (SIPp load vs direct and Kamailio)."""
