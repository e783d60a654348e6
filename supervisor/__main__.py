"""Run the supervisor: ``python -m chapiteau.supervisor --broker-fd N config.ini``."""

from __future__ import annotations

import sys

from chapiteau.supervisor.main import main

if __name__ == "__main__":
    sys.exit(main())
