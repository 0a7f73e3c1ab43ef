"""Assets by stage: preset -> dataset -> trained -> merged -> slot."""

import warnings

from dagster import BetaWarning

# the two beta APIs the graph relies on (observable sources, an Output's data_version) with Dagster
# pinned to one release: said once here and in DESIGN-CONFORMANCE, not on every command's terminal
warnings.filterwarnings("ignore", message="Function `observable_source_asset` is currently in beta", category=BetaWarning)
warnings.filterwarnings("ignore", message="Parameter `data_version` of initializer `Output.__init__` is currently in beta", category=BetaWarning)
