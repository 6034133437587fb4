"""Never imported by the tests nor their workers: a forged message names a class here.

Importing it leaves the file ``MODEL_TRIPWIRE_FILE`` names, so a test can show that decoding
a value never imports a module (tests/test_data_models.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

if "MODEL_TRIPWIRE_FILE" in os.environ:
    Path(os.environ["MODEL_TRIPWIRE_FILE"]).touch()


@dataclass
class Boom:
    path: str
