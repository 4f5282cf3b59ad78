"""The Discord image bot.

httpx imports its command-line client (``httpx._main``: click, rich, pygments; ~5.5 MB of
resident memory and ~50 ms of start-up) whenever those happen to be installed, e.g. by a dev
tool. The bot never runs httpx's CLI, so the import is refused before httpx loads (httpx falls
back to a stub ``main``).
"""

import sys

sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
