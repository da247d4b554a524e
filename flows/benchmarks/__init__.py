"""Benchmark commands (``phyvlm-cr benchmark KIND``), one module per kind; see ``flows.cli``."""
