import sys

from llmnas_transfer.cli import main

sys.exit(main())
