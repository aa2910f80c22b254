"""astro: small-data image classifiers from the command line.

Importing :mod:`astrocli.models` registers the zoo with timm, so that after
``import astrocli.models`` both ``astrocli.models.create_model(name)`` and
``timm.create_model(name)`` build every astro model.
"""

__version__ = "0.1.0"

from astrocli import models as models  # registers the zoo with timm
