"""hwsflow: an sFlow v5 agent fed by the kernel's tc sample action through psample."""

__version__ = "0.1.0"
