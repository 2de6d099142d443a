"""Run the command line as ``python -m llmnas_transfer``."""

import sys

from llmnas_transfer.cli import main

sys.exit(main())
