"""``python -m distilserve``: the ``distilserve`` command in any checkout, installed or not."""

from distilserve.cli import main

raise SystemExit(main())
