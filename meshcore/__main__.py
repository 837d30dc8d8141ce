"""`python -m meshcore` is the `meshcore` command."""
import sys

from meshcore.cli import main

sys.exit(main())
