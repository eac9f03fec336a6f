"""``python -m omi_audio``: the same as the omi-audio command."""

import sys

from omi_audio.cli import main

sys.exit(main())
