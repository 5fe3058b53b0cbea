import sys

from his.eval.stage import main

sys.exit(main())
