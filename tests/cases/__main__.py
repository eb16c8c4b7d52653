"""`python -m tests.cases regen|check [NAME...]`: see tests/cases/__init__.py."""
import sys

from tests.cases import main

sys.exit(main())
