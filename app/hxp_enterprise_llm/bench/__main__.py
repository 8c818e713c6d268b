import sys

from hxp_enterprise_llm.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
