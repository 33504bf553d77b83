"""Executors run one step attempt. Both in-process kinds run a subprocess, so a timeout can kill it."""
