"""``python -m facekd.export``: see ``facekd.export.command``."""
from facekd.export.command import main

raise SystemExit(main())
