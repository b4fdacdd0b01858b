"""`python -m datasets_scripts.synthetic`: write the synthetic sample (see the package docstring)."""

import sys

from datasets_scripts.synthetic import main

sys.exit(main())
