"""Checks on what comes in and goes out: input limits, masked URLs, which hosts are this machine."""
