"""Modules of the attention speed benchmark, whose entry point is benchmarks/attention_speed.py."""
