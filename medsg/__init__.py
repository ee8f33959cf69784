"""medsg: transfer learning for medical images with the SG-Former backbone.

Importing the package registers ``sgformer_s``, ``sgformer_m`` and ``sgformer_b`` in timm's model registry.
"""

from medsg import explain as explain  # noqa: F401  (significance_maps, used beside any model)
from medsg import models as models  # noqa: F401  (registers the timm variants)
from medsg.core import __version__ as __version__
