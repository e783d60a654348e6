"""Run the broker: ``python -m chapiteau.broker config.ini`` (the ``chapiteau`` command)."""

from __future__ import annotations

import sys

from chapiteau.broker.main import main

if __name__ == "__main__":
    sys.exit(main())
