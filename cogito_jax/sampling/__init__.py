"""Jitted generation engine: prefill once, decode N samples in a while_loop."""
