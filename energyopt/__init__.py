"""energyopt: forecast, optimize and watch electricity use. The `energyopt` command lives in cli.py."""

__version__ = "0.1.0"
