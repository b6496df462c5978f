"""The lowest layer of our own code: small helpers every tier may import (the release version,
loopback ports). Imports nothing of ours; ``protocol`` does not import it either."""
