import sys

from livemig.cli import main

sys.exit(main())
