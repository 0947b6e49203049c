import sys

from svfap_jax.cli import main

sys.exit(main())
