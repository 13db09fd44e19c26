"""``python -m bnfused``: print the environment report to include in bug reports."""

import sys

from .tools.environment import environment_report


def main() -> int:
    sys.stdout.write(environment_report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
