"""scalepool: loss-guided multi-scale force prediction for molecular simulation."""

__version__ = "0.1.0"
