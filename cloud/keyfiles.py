"""Files an installation generates on first use and keeps: keys and ids.

Free of Django, so the settings module can use it before Django is set up.
"""

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def read_or_create(path: Path, generate: Callable[[], str], dir_mode: int = 0o777) -> str:
    """The text of ``path``; on first use ``generate()`` is written there, mode 0600.

    Processes starting at once agree: each writes a draft of its own and hard-links
    it into place, which appears complete or not at all, so the first one wins and
    no reader ever sees a half-written file.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(generate())
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text()
