"""``python3 sitelink-relay.pyz``: the relay's command line."""

import sys

from sitelink_relay.cli import main

sys.exit(main())
