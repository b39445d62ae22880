"""``python -m models.distill ...``: the same as ``distilserve distill ...``.

For checkouts where the ``distilserve`` console script is not installed (or is stale): the
flags come from the same ``Settings`` class through the same generator.
"""

from __future__ import annotations

import sys

from server.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["distill", *sys.argv[1:]]))
