"""Neural forecasters, baselines, features and the model bundle: everything needed at inference.

Imports no other package of this project (see docs of the layout in README).
"""

# Importing the backbone modules registers them under their config names (models.forecaster.BACKBONES).
from models import baselines, ensemble, lstm, transformer  # noqa: F401
